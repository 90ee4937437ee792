"""The start-up memory check (`corewarding.workers.memory_plan`): its micro-batch model against
benchmarks/memory.py's fake-tensor accounting, its refusal at the paper's Co-rewarding-I settings,
and the worker's use of it before any model loads."""

from __future__ import annotations

import dataclasses
import sys
import types
from pathlib import Path

import pytest
import torch

from corewarding.errors import ConfigError
from corewarding.workers import memory_plan
from corewarding.workers.memory_plan import ModelShape, Settings

REPO = Path(__file__).resolve().parents[1]
QWEN3_8B_TOTAL = 8_190_735_360
QWEN3_8B_ROOT = 2 * 151936 * 4096 + 4096
QWEN3_8B = ModelShape(total=QWEN3_8B_TOTAL, root=QWEN3_8B_ROOT, layer=(QWEN3_8B_TOTAL - QWEN3_8B_ROOT) // 36,
                      largest=151936 * 4096, layers=36, hidden=4096, intermediate=12288, vocab=151936)
PAPER_CO_REWARDING_I = Settings(world_size=8, total_gb=80, vllm_share=0.8, sleeps=True, actor_offload=False,
                                ref_offload=True, micro_tokens=8 * (512 + 3072), log_prob_tokens=16 * (512 + 3072),
                                row_length=512 + 3072, chunk=1024, checkpointing=True)


@pytest.mark.parametrize("hidden, intermediate, layers, vocab, rows, prompt, response, chunk", [
    (1024, 3072, 4, 32000, 4, 128, 512, 256),  # the head's gradient is the backward's peak
    (2048, 5632, 2, 50000, 2, 256, 1024, 512),  # a shape the constants were not fitted to
])
def test_micro_batch_model_agrees_with_the_fake_tensor_benchmark(hidden, intermediate, layers, vocab, rows, prompt,
                                                                 response, chunk):
    """The analytic working memory within 15 % of what benchmarks/memory.py's MemTracker counts on
    fake tensors (padded rows, chunked head, gradient checkpointing)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from memory import Case, tracked_peak

    config = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                  num_attention_heads=hidden // 128, num_key_value_heads=hidden // 256, head_dim=128,
                  tie_word_embeddings=False)
    peak = tracked_peak(config, Case(response, packed=False, chunked=True), rows, prompt, chunk, True, fake=True)
    measured = peak["Total"] - peak["Parameter"]
    shape = ModelShape(total=0, root=0, layer=0, largest=0, layers=layers, hidden=hidden, intermediate=intermediate,
                       vocab=vocab)
    settings = dataclasses.replace(PAPER_CO_REWARDING_I, micro_tokens=rows * (prompt + response), chunk=chunk)
    estimate = memory_plan.working_gb(shape, settings)
    assert abs(estimate / measured - 1) < 0.15, (estimate, measured)


@pytest.mark.parametrize("hidden, intermediate, vocab, rows, prompt, response, chunk", [
    (4096, 12288, 151936, 16, 512, 3072, 1024),  # Qwen3-8B at the presets' 16 rows: a layer's transients
    (4096, 12288, 151936, 8, 512, 3072, 2048),  # wide chunks: the logits chunk is the peak
    (2048, 5632, 50000, 4, 256, 1024, 512),  # a shape the constants were not fitted to
])
def test_log_prob_model_agrees_with_the_fake_tensor_benchmark(hidden, intermediate, vocab, rows, prompt, response, chunk):
    """The no-grad log-prob micro-batch's analytic peak within 15 % of benchmarks/memory.py's
    MemTracker count on fake tensors (padded rows, chunked head, three layers)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from memory import Case, tracked_peak

    config = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=3,
                  num_attention_heads=hidden // 128, num_key_value_heads=hidden // 256, head_dim=128,
                  tie_word_embeddings=False)
    peak = tracked_peak(config, Case(response, packed=False, chunked=True), rows, prompt, chunk, True, fake=True,
                        log_prob=True)
    measured = peak["Total"] - peak["Parameter"]
    shape = dataclasses.replace(QWEN3_8B, hidden=hidden, intermediate=intermediate, vocab=vocab)
    settings = dataclasses.replace(PAPER_CO_REWARDING_I, log_prob_tokens=rows * (prompt + response),
                                   row_length=prompt + response, chunk=chunk)
    assert abs(memory_plan.log_prob_gb(shape, settings) / measured - 1) < 0.15, (memory_plan.log_prob_gb(shape, settings), measured)


def test_a_log_prob_micro_batch_that_does_not_fit_names_its_keys():
    """The old / reference log-probs at 192 rows of 3,584 tokens need ~70 GB of one layer's transients:
    refused in the log-prob phase (the update at 8 rows fits), naming the log-prob micro-batch keys."""
    settings = dataclasses.replace(PAPER_CO_REWARDING_I, vllm_share=0.6, log_prob_tokens=192 * (512 + 3072))
    phases = memory_plan.phases_gb(QWEN3_8B, settings)
    assert sum(phases["update"].values()) < memory_plan.HEADROOM * 80 < sum(phases["log-prob"].values())
    with pytest.raises(ValueError, match=r"the log-prob phase needs .*rollout\.log_prob_micro_batch_size_per_gpu and "
                                         r"actor_rollout_ref\.ref\.log_prob_micro_batch_size_per_gpu") as err:
        memory_plan.check(QWEN3_8B, settings)
    assert "ppo_micro_batch_size_per_gpu (or" not in str(err.value)  # the update is not the one to shrink
    only_ref = dataclasses.replace(settings, log_prob_keys=("actor_rollout_ref.ref.log_prob_max_token_len_per_gpu",))
    with pytest.raises(ValueError, match=r"a smaller actor_rollout_ref\.ref\.log_prob_max_token_len_per_gpu; ") as err:
        memory_plan.check(QWEN3_8B, only_ref)
    assert "rollout.log_prob" not in str(err.value)  # the old log-probs' batch is not the one to shrink
    memory_plan.check(QWEN3_8B, dataclasses.replace(settings, log_prob_tokens=32 * (512 + 3072)))


def test_fsdp_gradients_waiting_for_their_reduce_scatter_count_where_they_meet_the_peak():
    """FSDP2 keeps the output head's bf16 gradient until the root reduces at the end of the backward,
    and a layer's gradients beside their float32 copy: at 8 rows of Qwen3-8B (a layer's recomputation
    is the peak) they add 2.2 GB; at 4 rows the head's gradient is the peak, which already holds
    its own gradient and precedes every layer's: nothing; at a few tokens the root's end-of-backward
    reduce (bf16 gradients and float32 copy of embedding and head) is the peak."""
    def term(tokens: int) -> float:
        return memory_plan.phases_gb(QWEN3_8B, dataclasses.replace(PAPER_CO_REWARDING_I, micro_tokens=tokens))["update"][
            "reduce-scatter"]

    waiting = (151936 * 4096 * 2 + QWEN3_8B.layer * (2 + 4)) / 2**30
    assert term(8 * 3584) == pytest.approx(waiting, rel=1e-9) and 2.0 < waiting < 2.5
    assert term(4 * 3584) == 0.0
    few = dataclasses.replace(PAPER_CO_REWARDING_I, micro_tokens=16, chunk=16)
    root_reduce = QWEN3_8B.root * (2 + 4) / 2**30
    assert term(16) == pytest.approx(root_reduce - memory_plan.working_gb(QWEN3_8B, few), rel=1e-9) and term(16) > 0


def test_without_resharding_the_actor_stays_gathered_through_the_references_log_probs():
    """reshard_after_forward=False: after the old log-probs every actor layer stays gathered while
    the reference computes with its own root and two layers."""
    resharded = memory_plan.phases_gb(QWEN3_8B, PAPER_CO_REWARDING_I)["log-prob"]["unsharded"]
    gathered = memory_plan.phases_gb(QWEN3_8B, dataclasses.replace(PAPER_CO_REWARDING_I, reshard=False))["log-prob"]
    assert gathered["unsharded"] - resharded == pytest.approx((34 * QWEN3_8B.layer + QWEN3_8B.root + 2 * QWEN3_8B.layer)
                                                             * 2 / 2**30, rel=1e-9)


def test_the_release_share_for_co_rewarding_i_does_not_fit_an_80_gb_card():
    """Qwen3-8B over 8 GPUs: vLLM's 0.8 of the card beside the actor's shards and AdamW moments is
    refused, naming the key and the largest share that fits; the presets' 0.6 passes."""
    with pytest.raises(ValueError, match=r"rollout phase .*gpu_memory_utilization=0.8 -> at most 0\.7"):
        memory_plan.check(QWEN3_8B, PAPER_CO_REWARDING_I)
    line = memory_plan.check(QWEN3_8B, dataclasses.replace(PAPER_CO_REWARDING_I, vllm_share=0.6))
    assert line.startswith("GPU memory estimate per GPU") and "rollout" in line and "update" in line
    phases = memory_plan.phases_gb(QWEN3_8B, dataclasses.replace(PAPER_CO_REWARDING_I, vllm_share=0.6))
    per_gpu = QWEN3_8B_TOTAL / 8 / memory_plan.GIB
    assert phases["rollout"]["actor"] == pytest.approx(12 * per_gpu)  # fp32 shards + two fp32 moments
    assert phases["update"]["actor"] == pytest.approx(16 * per_gpu)  # + fp32 gradients
    assert phases["rollout"]["reference"] == 0.0  # offloaded
    assert "vLLM" not in phases["update"]  # asleep during the update


@pytest.mark.parametrize("preset", ["co_rewarding_i", "co_rewarding_ii", "co_rewarding_iii"])
def test_the_method_presets_fit_qwen3_8b_on_8_x_80_gb(preset, tmp_path):
    """Each Co-rewarding preset at the paper's shapes (Qwen3-8B, 8 GPUs of 80 GB), read through the
    config as a run reads it. Co-rewarding-III's update micro-batch is the release's 4 (I, II: 8)."""
    from corewarding.config.loading import compose_config, load_config

    config = load_config(compose_config([f"+method={preset}", f"actor_rollout_ref.model.path={tmp_path}",
                                         "data.train_files=x.parquet", "data.train_aug_files=y.parquet",
                                         "trainer.n_gpus_per_node=8", "trainer.device=cuda"]), check_paths=False)
    settings = memory_plan.settings_of(config, 8, 80)
    assert settings.micro_tokens == (4 if preset == "co_rewarding_iii" else 8) * (512 + 3072)
    assert settings.log_prob_tokens == 16 * (512 + 3072) and settings.row_length == 512 + 3072
    assert settings.vllm_share == 0.6 and settings.ref_offload and settings.checkpointing
    line = memory_plan.check(QWEN3_8B, settings)
    phases = memory_plan.phases_gb(QWEN3_8B, settings)
    assert max(sum(p.values()) for p in phases.values()) < memory_plan.HEADROOM * 80, line


def test_the_log_prob_micro_batch_is_the_larger_of_the_actors_and_the_references(tmp_path):
    """rollout.log_prob_* for the old log-probs, ref.log_prob_* for the reference's; a dynamic batch
    counts its token budget. The plan keeps the keys that set the larger one, for its refusal."""
    from corewarding.config.loading import compose_config, load_config

    def tokens(*overrides: str) -> tuple[int, tuple[str, ...]]:
        config = load_config(compose_config([f"actor_rollout_ref.model.path={tmp_path}", "data.train_files=x.parquet",
                                             "data.max_prompt_length=100", "data.max_response_length=300", *overrides]),
                             check_paths=False)
        settings = memory_plan.settings_of(config, 1, 80)
        return settings.log_prob_tokens, settings.log_prob_keys

    rollout_key, ref_key = "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu", \
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu"
    assert tokens(f"{rollout_key}=3", f"{ref_key}=5") == (5 * 400, (ref_key,))
    assert tokens(f"{rollout_key}=7", f"{ref_key}=5") == (7 * 400, (rollout_key,))
    assert tokens(f"{rollout_key}=5", f"{ref_key}=5") == (5 * 400, (rollout_key, ref_key))
    assert tokens(f"{rollout_key}=2", f"{ref_key}=2", "actor_rollout_ref.ref.log_prob_use_dynamic_bsz=True",
                  "actor_rollout_ref.ref.log_prob_max_token_len_per_gpu=9000") == \
        (9000, ("actor_rollout_ref.ref.log_prob_max_token_len_per_gpu",))


def test_an_update_that_does_not_fit_names_the_micro_batch_keys():
    small_card = dataclasses.replace(PAPER_CO_REWARDING_I, vllm_share=0.3, total_gb=40, checkpointing=False, sleeps=False)
    with pytest.raises(ValueError) as err:
        memory_plan.check(QWEN3_8B, small_card)
    message = str(err.value)
    for key in ("ppo_micro_batch_size_per_gpu", "enable_gradient_checkpointing=True", "free_cache_engine=True",
                "actor.fsdp_config.param_offload=True", "trainer.skip_memory_check=True"):
        assert key in message
    offloaded = memory_plan.phases_gb(QWEN3_8B, dataclasses.replace(small_card, actor_offload=True))
    assert offloaded["update"]["actor"] == 0.0


def test_without_resharding_after_the_forward_every_layer_stays_gathered():
    """reshard_after_forward=False: the update holds all 36 layers unsharded in bf16 (12.3 GB more at
    Qwen3-8B), which the plan counts: a 64 GB card that fits the update with resharding does not
    without it, and the refusal names the key."""
    resharded = memory_plan.phases_gb(QWEN3_8B, PAPER_CO_REWARDING_I)["update"]["unsharded"]
    kept = dataclasses.replace(PAPER_CO_REWARDING_I, reshard=False)
    gathered = memory_plan.phases_gb(QWEN3_8B, kept)["update"]["unsharded"]
    assert gathered - resharded == pytest.approx(34 * QWEN3_8B.layer * 2 / 2**30, rel=1e-9)
    card = dataclasses.replace(PAPER_CO_REWARDING_I, vllm_share=0.3, total_gb=64, sleeps=False)
    memory_plan.check(QWEN3_8B, card)
    with pytest.raises(ValueError, match="reshard_after_forward=True"):
        memory_plan.check(QWEN3_8B, dataclasses.replace(card, reshard=False))


def test_model_shape_from_a_config_counts_the_parameters():
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=False)
    shape = ModelShape.from_hf_config(config)
    model = Qwen3ForCausalLM(config)
    assert shape.total == sum(p.numel() for p in model.parameters())
    assert shape.layer == sum(p.numel() for p in model.model.layers[0].parameters())
    assert shape.root == 2 * 512 * 64 + 64 and shape.largest == 512 * 64 and shape.layers == 3


def test_a_share_alone_too_large_is_lowered_to_what_fits():
    fitted, note = memory_plan.fit_rollout_share(QWEN3_8B, PAPER_CO_REWARDING_I)
    assert fitted.vllm_share == 0.75 and fitted == dataclasses.replace(PAPER_CO_REWARDING_I, vllm_share=0.75)
    assert note.startswith("actor_rollout_ref.rollout.gpu_memory_utilization=0.8 does not fit this 80 GB GPU")
    assert memory_plan.check(QWEN3_8B, fitted).startswith("GPU memory estimate per GPU")
    assert memory_plan.fit_rollout_share(QWEN3_8B, fitted) == (fitted, None)  # what fits is left alone
    too_long = dataclasses.replace(PAPER_CO_REWARDING_I, sleeps=True, micro_tokens=200_000)  # the update is over
    assert memory_plan.fit_rollout_share(QWEN3_8B, too_long) == (too_long, None)


def _worker_on_a_fake_gpu(tiny_model_path: Path, total_gb: float, *extra: str):
    from corewarding.config.loading import compose_config, load_config
    from corewarding.workers.fsdp_worker import ActorRolloutRefWorker

    config = load_config(compose_config([f"actor_rollout_ref.model.path={tiny_model_path}", "trainer.device=cpu",
                                         "trainer.n_gpus_per_node=1", "data.train_files=x.parquet", *extra]),
                         check_paths=False)
    worker = ActorRolloutRefWorker(config, rank=0, world_size=1)
    worker.device = torch.device("cuda", 0)
    return worker, types.SimpleNamespace(total_memory=total_gb * memory_plan.GIB)


def test_the_worker_checks_before_loading_and_refuses_with_a_config_error(tiny_model_path, monkeypatch):
    worker, props = _worker_on_a_fake_gpu(tiny_model_path, 0.5, "actor_rollout_ref.rollout.gpu_memory_utilization=0.9")
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: props)
    with pytest.raises(ConfigError, match="gpu_memory_utilization=0.9 -> at most"):
        worker._check_memory()
    worker, props = _worker_on_a_fake_gpu(tiny_model_path, 0.5, "actor_rollout_ref.rollout.gpu_memory_utilization=0.9",
                                          "trainer.skip_memory_check=True")
    assert worker._check_memory().startswith("WARNING (trainer.skip_memory_check=True: starting anyway) the ")
    worker, props = _worker_on_a_fake_gpu(tiny_model_path, 80, "actor_rollout_ref.rollout.gpu_memory_utilization=0.5")
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: props)
    assert worker._check_memory().startswith("GPU memory estimate per GPU (GB, card 80)")
    assert worker.rollout_share == 0.5


def test_the_worker_uses_a_lowered_share_and_says_so_first(tiny_model_path, monkeypatch):
    worker, props = _worker_on_a_fake_gpu(tiny_model_path, 80, "actor_rollout_ref.rollout.gpu_memory_utilization=0.99")
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: props)
    note, line = worker._check_memory().split("\n")
    assert note.startswith("note: actor_rollout_ref.rollout.gpu_memory_utilization=0.99 does not fit this 80 GB GPU")
    assert worker.rollout_share == 0.9 and line.startswith("GPU memory estimate per GPU (GB, card 80)")
