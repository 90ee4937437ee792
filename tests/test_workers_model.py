"""The worker's model side in one process, without Ray: the entropy term of update_actor and the EMA
teacher on plain models, the process-group and thread options, the forward layout and attention
choice, resharding after a no-grad forward, the dtype of the weight push, the rollout stream of a
resume on another tensor-parallel size, and the generation config an export carries."""

from __future__ import annotations

import pytest
import torch

from corewarding.batch import Batch
from corewarding.config import replace_in
from numerics import assert_ema
from worker_setup import LR, N, load_plain, make_config, rollout_batch

pytestmark = pytest.mark.slow


def test_update_actor_entropy_loss_only_with_a_bonus(tiny_model_path):
    """actor/entropy_loss is reported (and the entropy bonus applied) only with actor.entropy_coeff != 0;
    actor/entropy is the trainer's metric of the rollouts, not the update's."""
    from corewarding.workers.model.forward import install_token_stats
    from corewarding.workers.fsdp_worker import ActorRolloutRefWorker

    config = make_config(tiny_model_path, **{"actor_rollout_ref.actor.entropy_coeff": 0.0})
    worker = ActorRolloutRefWorker(config, rank=0, world_size=1)
    worker.actor, worker.attn_impl, worker.device = load_plain(tiny_model_path), "sdpa", torch.device("cpu")
    install_token_stats(worker.actor)
    worker.optimizer = torch.optim.AdamW(worker.actor.parameters(), lr=LR)
    worker.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(worker.optimizer, lambda step: 1.0)
    batch = rollout_batch(num_prompts=4, seed=9)  # 8 rows: one mini-batch, 4 micro-batches
    g = torch.Generator().manual_seed(9)
    extra = {k: torch.randn(batch["responses"].shape, generator=g) - 3 for k in ("old_log_probs", "ref_log_probs")}
    batch = Batch(tensors={**batch.tensors, **extra, "advantages": torch.randn(len(batch), generator=g)})

    metrics = worker.update_actor(batch, rollouts_per_prompt=N).metrics
    assert not any("entropy" in key for key in metrics)
    worker.config = replace_in(config, "actor_rollout_ref.actor", entropy_coeff=0.01)
    metrics = worker.update_actor(batch, rollouts_per_prompt=N).metrics
    assert torch.isfinite(torch.tensor(metrics["actor/entropy_loss"])) and metrics["actor/entropy_loss"] > 0
    assert "actor/entropy" not in metrics


def test_update_teacher_is_ema_update_on_local_tensors(tiny_model_path):
    """update_teacher goes through algos.ema_update_ (name-matched): plain tensors here, FSDP
    shards in test_update_teacher_is_ema; mismatched models are refused by name."""
    from corewarding.workers.fsdp_worker import ActorRolloutRefWorker

    worker = ActorRolloutRefWorker(make_config(tiny_model_path), rank=0, world_size=1)
    worker.actor, worker.ref = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    policy = {k: v.clone() for k, v in worker.actor.state_dict().items()}
    teacher = {k: v.clone() for k, v in worker.ref.state_dict().items()}
    worker.update_teacher(0.75)
    assert_ema(worker.ref.state_dict(), teacher, policy, 0.75)
    assert worker.teacher_version == 1
    worker.ref = torch.nn.Sequential(torch.nn.Linear(3, 2))  # names 0.weight / 0.bias
    with pytest.raises(ValueError, match="same keys"):
        worker.update_teacher(0.5)


def test_process_group_options():
    """gloo on CPU; on GPU a group with a CPU backend beside NCCL (clipping offloaded CPU gradients
    reduces over it); the timeout from actor_rollout_ref.nccl_timeout either way."""
    import datetime

    from corewarding.workers.fsdp_worker import process_group_options

    cpu = process_group_options(torch.device("cpu"), 3600)
    assert cpu == {"backend": "gloo", "timeout": datetime.timedelta(hours=1)}
    gpu = process_group_options(torch.device("cuda", 3), 90)
    assert gpu == {"backend": "cpu:gloo,cuda:nccl", "timeout": datetime.timedelta(seconds=90),
                   "device_id": torch.device("cuda", 3)}


def test_an_offloading_gpu_worker_takes_its_share_of_the_node_cores():
    """AdamW over offloaded shards runs on the CPU: one thread per GPU worker (the default) would
    make it the slowest part of the step; 64 cores over 8 GPUs give each worker 8."""
    from corewarding.workers.fsdp_worker import gpu_worker_threads

    assert gpu_worker_threads(1, actor_offload=True, node_cpus=64, gpus_per_node=8) == 8
    assert gpu_worker_threads(1, actor_offload=False, node_cpus=64, gpus_per_node=8) == 1
    assert gpu_worker_threads(12, actor_offload=True, node_cpus=64, gpus_per_node=8) == 12  # set by hand: kept


def test_a_worker_seeing_several_gpus_is_refused_where_vllm_would_take_gpu_0():
    """Ray shows each worker one GPU (device 0). A worker that sees all eight trains on LOCAL_RANK,
    where a TP-1 vLLM engine, which starts on the first visible GPU, would not follow it: refused
    off GPU 0, naming the variable; an engine that follows the worker passes."""
    from corewarding.errors import ConfigError
    from corewarding.workers.fsdp_worker import worker_gpu

    assert worker_gpu(1, 5, engine_takes_first_gpu=True) == 0
    assert worker_gpu(8, 0, engine_takes_first_gpu=True) == 0
    assert worker_gpu(8, 5, engine_takes_first_gpu=False) == 5
    with pytest.raises(ConfigError, match="sees 8 GPUs and trains on GPU 5 .*RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES"):
        worker_gpu(8, 5, engine_takes_first_gpu=True)


def test_forward_layout_is_padded_on_a_gpu_without_flash_attention(caplog):
    """Packed rows without flash-attention make transformers build a dense [T, T] mask: on CUDA the
    layout falls back to padded, with one warning; flash-attention keeps packing; CPU shares prompts."""
    from corewarding.workers.model.sharding import forward_layout

    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    with caplog.at_level("WARNING"):
        assert forward_layout(True, "auto", cuda, "sdpa") == "padded"
        assert forward_layout(True, "auto", cuda, "sdpa") == "padded"
    assert sum("padded layout" in r.message for r in caplog.records) == 1
    assert forward_layout(True, "auto", cuda, "flash_attention_2") == "packed"
    assert forward_layout(True, "auto", cpu, "sdpa") == "shared_prefix"
    assert forward_layout(True, "false", cpu, "sdpa") == "packed"
    assert forward_layout(False, "auto", cuda, "flash_attention_2") == "padded"
    with pytest.raises(ValueError, match="share_prompt_prefix=true needs an attention that takes a 4-D mask"):
        forward_layout(True, "true", cuda, "flash_attention_2")


def test_a_hub_flash_kernel_packs_rows_like_flash_attention_2():
    """A hub kernel (kernels-community/flash-attn2) is flash-attention to transformers, which then
    takes the packed kwargs: the layout must agree, not fall back to padded by the name's prefix."""
    from corewarding.workers.model.sharding import forward_layout

    cuda = torch.device("cuda", 0)
    assert forward_layout(True, "auto", cuda, "kernels-community/flash-attn2") == "packed"
    with pytest.raises(ValueError, match="share_prompt_prefix=true needs an attention that takes a 4-D mask"):
        forward_layout(True, "true", cuda, "kernels-community/flash-attn2")


def test_a_flash_attn_that_does_not_load_is_not_used(tmp_path, monkeypatch):
    """A flash-attn wheel built for another torch is found by find_spec and fails when its CUDA
    extension loads: the attention is SDPA, not a crash at the first forward."""
    from corewarding.workers.model.sharding import attention_implementation

    package = tmp_path / "flash_attn"
    package.mkdir()
    (package / "__init__.py").write_text("raise ImportError('flash_attn_2_cuda.so: undefined symbol: _ZN3c104cuda')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert attention_implementation(None, torch.device("cuda", 0)) == "sdpa"
    assert attention_implementation(None, torch.device("cpu")) == "sdpa_segments"  # the CPU workers: no dense mask
    assert attention_implementation("eager", torch.device("cuda", 0)) == "eager"


def test_reshard_leaves_only_shards_after_a_no_grad_forward(tiny_model_path, tmp_path):
    """A root module left unsharded after a no-grad forward (older torch, or reshard_after_forward
    off) holds full tensors; `sharding.reshard`, which update_teacher calls before touching the local
    shards, puts every module back to its shards."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor

    from corewarding.workers.model import sharding

    own = not dist.is_initialized()
    if own:
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model = load_plain(tiny_model_path)
        mesh = init_device_mesh("cpu", (1,))
        sharding.shard_model(model, mesh, torch.float32, offload=False, reshard=False, rank=0, device=torch.device("cpu"))
        with torch.no_grad():
            model(input_ids=torch.tensor([[5, 6, 7]]))
        assert not all(isinstance(p, DTensor) for p in model.parameters())  # left unsharded
        sharding.reshard(model)
        assert all(isinstance(p, DTensor) for p in model.parameters())
    finally:
        if own:
            dist.destroy_process_group()


def test_weight_push_in_the_engine_dtype():
    """The push hands the engine its own dtype (bf16 on GPU: half the bytes of the fp32 masters);
    without a dtype the float32 masters go as they are."""
    from corewarding.workers.model.sharding import full_params

    model = torch.nn.Linear(3, 2)
    pushed = dict(full_params(model, torch.device("cpu"), torch.bfloat16))
    assert {t.dtype for t in pushed.values()} == {torch.bfloat16}
    assert torch.equal(pushed["weight"], model.weight.detach().to(torch.bfloat16))
    assert {t.dtype for _, t in full_params(model, torch.device("cpu"))} == {torch.float32}


def test_a_resume_on_another_tensor_parallel_size_starts_the_rollout_stream_anew(tiny_model_path, tmp_path):
    """The ranks of a TP group must draw the same request seeds, which streams saved per rank (under
    another TP size) are not: such a checkpoint's rollout stream is re-derived as on another worker
    count (`_reseed`); under the same TP size the saved stream continues."""
    import json

    from corewarding import checkpoint_layout as layout
    from corewarding.workers.local_group import LocalWorkerGroup
    from corewarding.workers.rng_state import resumed_seed, seeded_rng_state
    from corewarding.workers.rollout_runner import rollout_seed

    config = make_config(tiny_model_path, **{"trainer.n_gpus_per_node": 1})
    group = LocalWorkerGroup(config)
    try:
        group.init_model(10)
        worker = group.workers[0]
        saved_stream = seeded_rng_state(12345, worker.device)  # a stream neither seeding derives
        worker.rollout.rng = saved_stream.clone()
        group.save_checkpoint(str(tmp_path / "ckpt"))
        group.load_checkpoint(str(tmp_path / "ckpt"))
        assert torch.equal(worker.rollout.rng, saved_stream)
        state_file = layout.optim_dir(tmp_path / "ckpt") / layout.OPTIM_STATE_FILE
        state = json.loads(state_file.read_text())
        assert state["tensor_parallel_size"] == 1
        state_file.write_text(json.dumps({**state, "tensor_parallel_size": 2}))
        group.load_checkpoint(str(tmp_path / "ckpt"))
        reseeded = seeded_rng_state(resumed_seed(rollout_seed(config.actor_rollout_ref.rollout, 0), 0), worker.device)
        assert torch.equal(worker.rollout.rng, reseeded) and not torch.equal(reseeded, saved_stream)
    finally:
        group.close()


def test_an_export_keeps_the_models_generation_config_as_it_came(tiny_model_path, tmp_path):
    """A model folder whose generation_config.json transformers loads but refuses to save (a
    temperature without do_sample): checkpoints and exports carry the file as it came, instead of
    failing at the first save; without a file, the one transformers made is written unvalidated."""
    import json
    import shutil
    import types

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from corewarding.workers.checkpoint.worker_checkpoint import export

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_path, model_dir)
    text = json.dumps({"bos_token_id": 1, "eos_token_id": 2, "temperature": 0.6, "top_p": 0.95, "do_sample": False})
    (model_dir / "generation_config.json").write_text(text)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    worker = types.SimpleNamespace(config=make_config(model_dir), actor=model, rank=0, world_size=1,
                                   tokenizer=AutoTokenizer.from_pretrained(model_dir))
    export(worker, model, tmp_path / "out")
    assert (tmp_path / "out" / "generation_config.json").read_text() == text
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "out") is not None
    # no file: transformers makes one from config.json's sampling keys, which it would not save either
    (model_dir / "generation_config.json").unlink()
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config, "temperature": 0.6, "top_p": 0.95}))
    worker.actor = model = AutoModelForCausalLM.from_pretrained(model_dir)
    export(worker, model, tmp_path / "out2")
    assert json.loads((tmp_path / "out2" / "generation_config.json").read_text())["temperature"] == 0.6
