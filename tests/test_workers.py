"""The FSDP2 worker group on CPU: 2 Ray actors (gloo), a tiny random Llama, checked against plain
single-process torch computations."""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from corewarding.batch import Batch
from corewarding.config import Config, compose_config, load_config, replace_in
from corewarding.data import left_pad, load_tokenizer
from corewarding.workers.ports import free_port
from corewarding.workers.rollout.base import RolloutOutput
from numerics import FORWARD_REL, GRAD_REL, WEIGHTS_REL, assert_all_rel_close, assert_ema, assert_rel_close
from spawned_ranks import run_spawned_ranks

pytestmark = pytest.mark.slow

ray = pytest.importorskip("ray")

TEMPERATURE = 0.9
N = 2  # rollouts per prompt
R = 6  # max response length
LR = 1e-3


def make_config(model_path: Path, **extra: Any) -> Config:
    """The typed config of these tests: the tiny model, 2 CPU workers, the HF engine, `extra` overrides."""
    overrides = {
        "trainer.device": "cpu",
        "trainer.nnodes": 1,
        "trainer.n_gpus_per_node": 2,
        "trainer.cpus_per_worker": 1,
        "actor_rollout_ref.model.path": str(model_path),
        "actor_rollout_ref.model.enable_gradient_checkpointing": True,
        "actor_rollout_ref.rollout.name": "hf",
        "actor_rollout_ref.rollout.n": N,
        "actor_rollout_ref.rollout.temperature": TEMPERATURE,
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu": 3,
        "actor_rollout_ref.rollout.val_kwargs.do_sample": False,
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu": 2,
        "data.max_prompt_length": 16,
        "data.max_response_length": R,
        "data.train_batch_size": 8,
        "actor_rollout_ref.actor.ppo_mini_batch_size": 4,  # prompts -> 4 x 2 / 2 = 4 rows per rank
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu": 2,
        "actor_rollout_ref.actor.optim.lr": LR,
        # Adam divides by sqrt(v) + eps: with eps 1e-8 a weight whose gradient is ~0 turns the
        # two-rank reduce-scatter's different summation order into a visible step difference;
        # a large eps keeps the update linear in the gradient, so 1e-5 compares the math itself.
        "actor_rollout_ref.actor.optim.eps": 1e-3,
        "actor_rollout_ref.actor.optim.lr_warmup_steps": 0,
        "actor_rollout_ref.actor.optim.warmup_style": "constant",
        "actor_rollout_ref.actor.use_kl_loss": True,
        "actor_rollout_ref.actor.kl_loss_coef": 0.1,
        "actor_rollout_ref.actor.entropy_coeff": 0.01,
        **extra,
    }
    # the bare workers below take TP groups on CPU (recording engines), which a run would refuse
    tp = overrides.pop("actor_rollout_ref.rollout.tensor_model_parallel_size", 1)
    config = load_config(compose_config([f"{k}={v}" for k, v in overrides.items()]), check_paths=False)
    return replace_in(config, "actor_rollout_ref.rollout", tensor_model_parallel_size=tp)


@pytest.fixture(scope="module")
def setup(tiny_model_path):
    from corewarding.workers.group import RayWorkerGroup

    # a short folder under /tmp: Ray's socket paths must stay under 108 bytes
    tmp = Path(tempfile.mkdtemp(prefix="cw_wk_", dir="/tmp"))
    config = make_config(tiny_model_path)
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=str(tmp / "ray"), log_to_driver=False)
    group = RayWorkerGroup(config)
    try:
        group.init_model(10)
        initial = tmp / "initial"
        group.save_checkpoint(str(initial))  # fresh optimizer: no state saved
        yield {"group": group, "config": config, "tmp": tmp, "initial": initial, "path": tiny_model_path}
    finally:
        group.close()
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)  # checkpoints and Ray's session: ~700 MB a run


@pytest.fixture(scope="module")
def tokenizer(tiny_model_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_path)


def reset(setup) -> None:
    setup["group"].load_checkpoint(str(setup["initial"]))


def prompt_batch(tokenizer, texts: list[str]) -> Batch:
    """Prompts as the trainer sends them: token-id lists."""
    return Batch(rows={"prompt_ids": [tokenizer.encode(t) for t in texts], "uid": [f"u{i}" for i in range(len(texts))]})


def generate(group_or_worker, prompts: Batch, role: str = "policy") -> Batch:
    """Rollouts of `prompts` (a worker group, which answers as one worker, or one worker), prompts
    padded to their longest."""
    width = max(len(p) for p in prompts.rows["prompt_ids"])
    return group_or_worker.generate_sequences(prompts, role=role, prompt_width=width).rollouts


def rollout_batch(num_prompts: int, seed: int, vocab: int = 49152, prompt_width: int = 7) -> Batch:
    """Synthetic rollouts: left-padded random prompts, right-padded random responses."""
    g = torch.Generator().manual_seed(seed)
    rows = num_prompts * N
    prompt_len = torch.randint(2, prompt_width + 1, (rows,), generator=g)
    resp_len = torch.randint(1, R + 1, (rows,), generator=g)
    prompts = torch.randint(3, vocab, (rows, prompt_width), generator=g)
    pmask = (torch.arange(prompt_width)[None] >= prompt_width - prompt_len[:, None]).long()
    prompts = torch.where(pmask.bool(), prompts, torch.full_like(prompts, 2))
    responses = torch.randint(3, vocab, (rows, R), generator=g)
    rmask = (torch.arange(R)[None] < resp_len[:, None]).long()
    responses = torch.where(rmask.bool(), responses, torch.full_like(responses, 2))
    attn = torch.cat([pmask, rmask], dim=1)
    return Batch(
        tensors={
            "prompts": prompts,
            "responses": responses,
            "response_mask": rmask,
            "input_ids": torch.cat([prompts, responses], dim=1),
            "attention_mask": attn,
            "position_ids": (attn.cumsum(1) - 1).clamp(min=0),
        },
        rows={"uid": [f"u{i // N}" for i in range(rows)]},
    )


def reference_logits(model, batch: Batch) -> torch.Tensor:
    with torch.no_grad():
        out = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=batch["position_ids"]
        )
    return out.logits[:, -R - 1 : -1] / TEMPERATURE


def load_plain(path: Path, state: dict | None = None, dtype: torch.dtype = torch.float32):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa")
    if state is not None:
        model.load_state_dict(state, strict=False)
        model.tie_weights()
    return model


def full_state(setup, which: str = "actor") -> dict[str, torch.Tensor]:
    return setup["group"].get_full_state_dict(which)


# ----------------------------------------------------------------------------------------------


def test_generate_shapes_and_masks(setup, tokenizer):
    reset(setup)
    group = setup["group"]
    texts = ["hello there", "what is 1+1?", "a", "the quick brown fox jumps"]
    batch = prompt_batch(tokenizer, texts)
    width = max(len(p) for p in batch.rows["prompt_ids"])
    generated = group.generate_sequences(batch, role="policy", prompt_width=width)
    out = generated.rollouts
    rows = len(texts) * N
    assert out.rows["uid"] == [u for u in batch.rows["uid"] for _ in range(N)]
    assert out.rows["prompt_ids"] == [p for p in batch.rows["prompt_ids"] for _ in range(N)]
    assert out["responses"].shape == out["response_mask"].shape == (rows, R)
    assert out["input_ids"].shape == out["attention_mask"].shape == out["position_ids"].shape == (rows, width + R)
    prompts, prompt_mask = left_pad(out.rows["prompt_ids"], tokenizer.pad_token_id, width=width)
    assert torch.equal(out["input_ids"], torch.cat([prompts, out["responses"]], 1))  # padded once, here
    mask = out["response_mask"]
    lengths = mask.sum(1)
    assert torch.equal(mask, (torch.arange(R)[None] < lengths[:, None]).long())  # contiguous from the left
    assert torch.all(out["responses"][mask == 0] == tokenizer.pad_token_id)
    assert torch.equal(out["attention_mask"], torch.cat([prompt_mask, mask], 1))
    assert torch.equal(out["position_ids"], (out["attention_mask"].cumsum(1) - 1).clamp(min=0))
    for i in range(rows):
        ids = out["responses"][i, : lengths[i]].tolist()
        assert out.rows["response_text"][i] == tokenizer.decode(ids, skip_special_tokens=True)
        if lengths[i] < R:  # stopped early: only at EOS, which is kept as the last response token
            assert ids[-1] == tokenizer.eos_token_id
    assert generated.weight_sync_s >= 0 and generated.generate_s > 0


class RecordingEngine:
    """A fake engine whose outputs depend only on the prompt and the sample index; it records the
    calls (generate, weight pushes with the first pushed value, sleep / wake-up, close), the prompts of each
    generate call and one draw from the global torch RNG per call (what a sampler draws from)."""

    def __init__(self, drops_weights: bool = False) -> None:
        self.drops_weights = drops_weights
        self.calls: list[str] = []
        self.prompts: list[list[list[int]]] = []
        self.draws: list[float] = []
        self.seeds: list[int | None] = []

    def generate(self, prompts, sampling):
        self.calls.append("generate")
        self.prompts.append([list(p) for p in prompts])
        self.draws.append(torch.rand(1).item())
        self.seeds.append(sampling.seed)
        return [
            RolloutOutput(token_ids=[10 + (sum(p) + j) % 90, 10 + len(p)], logprobs=[-0.25, -0.5])
            for p in prompts
            for j in range(sampling.n)
        ]

    def load_weights(self, named):
        first = [float(t.flatten()[0]) for _, t in named][0]
        self.calls.append(f"load:{first:g}")

    def sleep(self) -> bool:
        self.calls.append("sleep")
        return self.drops_weights

    def wake_up(self, tags=None) -> None:
        self.calls.append("wake_up:" + ",".join(tags or ("all",)))

    def close(self) -> None:
        self.calls.append("close")


class IdsTokenizer:
    """The tokenizer attributes generate_sequences uses, without transformers (spawned ranks)."""

    pad_token_id, eos_token_id = 0, 1

    def batch_decode(self, sequences, skip_special_tokens: bool = True) -> list[str]:
        return [" ".join(map(str, ids)) for ids in sequences]


def bare_worker(config: Config, engine, tokenizer, rank: int = 0, world_size: int = 1, tp_group=None):
    """A worker without init_model (no process group, no models): enough for generate_sequences."""
    from corewarding.workers.fsdp_worker import ActorRolloutRefWorker
    from corewarding.workers.rollout_runner import RolloutRunner

    worker = ActorRolloutRefWorker(config, rank=rank, world_size=world_size)
    worker.rollout = RolloutRunner(engine, config.actor_rollout_ref.rollout, config.data.max_response_length, tokenizer,
                                   tokenizer.pad_token_id, [tokenizer.eos_token_id], torch.device("cpu"), rank, tp_group)
    return worker


def ids_batch(prompts: list[list[int]]) -> Batch:
    """Prompt ids as the trainer sends them (token-id lists)."""
    return Batch(rows={"prompt_ids": [list(p) for p in prompts], "uid": [f"u{i}" for i in range(len(prompts))]})


def test_generate_packing_with_fake_engine(tiny_model_path, tokenizer):
    """EOS cut / padding / log-probs / text, through the worker's packing code with a scripted engine."""
    eos = tokenizer.eos_token_id
    scripted = [[10, 11, eos], [12] * R, [eos], [13, 14]]

    class Engine:
        def __init__(self):
            self.seen = None

        def generate(self, prompts, sampling):
            self.seen = (prompts, sampling)
            return [RolloutOutput(token_ids=ids, logprobs=[-0.5] * len(ids)) for ids in scripted]

        def load_weights(self, named):
            raise AssertionError("weights are current: no push expected")

        def sleep(self):
            return False

        def wake_up(self, tags=None):
            pass

        def close(self):
            pass

    engine = Engine()
    worker = bare_worker(make_config(tiny_model_path), engine, tokenizer)
    batch = prompt_batch(tokenizer, ["one two three", "four"])
    out = generate(worker, batch)
    prompts, sampling = engine.seen
    assert prompts == [tokenizer.encode("one two three"), tokenizer.encode("four")]  # padding stripped
    assert sampling.n == N and sampling.max_new_tokens == R and sampling.temperature == TEMPERATURE
    assert eos in sampling.stop_token_ids
    assert out["response_mask"].sum(1).tolist() == [3, R, 1, 2]
    assert out["responses"][0].tolist() == [10, 11, eos] + [tokenizer.pad_token_id] * (R - 3)
    assert out["rollout_log_probs"][0].tolist() == [-0.5] * 3 + [0.0] * (R - 3)
    assert out["truncated"].tolist() == [False, True, False, False]  # only row 1 filled R tokens without stopping
    assert out.rows["response_text"][2] == ""
    assert out.rows["uid"] == ["u0", "u0", "u1", "u1"]
    assert out.rows["sample_index"] == [0, 1, 0, 1]  # generation order within each prompt's group
    val = worker.rollout.sampling("validation")
    assert val.greedy and val.n == 1


def test_leaving_the_process_group_closes_the_engine_first(tiny_model_path, tokenizer, monkeypatch):
    """An engine's groups (vLLM's) live under the worker's process group: the worker closes the
    engine, then leaves the group."""
    from corewarding.workers import fsdp_worker

    engine = RecordingEngine()
    worker = bare_worker(make_config(tiny_model_path), engine, tokenizer)
    monkeypatch.setattr(fsdp_worker.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(fsdp_worker.dist, "destroy_process_group", lambda: engine.calls.append("destroy"))
    worker.leave_process_group()
    assert engine.calls == ["close", "destroy"]


@pytest.mark.parametrize("drops_weights", [False, True])
def test_free_cache_engine_call_order(tiny_model_path, tokenizer, drops_weights):
    """rollout.free_cache_engine: wake the weights -> push (only when the engine lacks them) -> wake
    the KV cache -> generate -> sleep, for a policy rollout, a teacher rollout right after and a policy
    rollout again; an engine whose sleep drops the weights (vLLM level 2) gets them pushed after
    every wake-up. The KV cache is never awake during a push (its memory and the push's transient)."""
    config = make_config(tiny_model_path, **{"actor_rollout_ref.rollout.free_cache_engine": True})
    engine = RecordingEngine(drops_weights=drops_weights)
    worker = bare_worker(config, engine, tokenizer)
    worker.actor, worker.ref = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    torch.nn.init.constant_(worker.actor.weight, 1.0)
    torch.nn.init.constant_(worker.ref.weight, 2.0)
    worker.policy_version = worker.teacher_version = 1  # after an update and an EMA step
    worker.rollout.holds = {("policy", 1)}  # the engine holds the updated policy
    prompts = prompt_batch(tokenizer, ["one two", "three"])
    for role in ("policy", "teacher", "policy", "policy"):
        generate(worker, prompts, role)
    policy, teacher, rollout = "load:1", "load:2", ["wake_up:kv_cache", "generate", "sleep"]
    weights = "wake_up:weights"
    expected = [
        weights, *rollout,
        weights, teacher, *rollout,
        weights, policy, *rollout,
        weights, *([policy] if drops_weights else []), *rollout,
    ]
    assert engine.calls == expected


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


def test_engine_build_leaves_the_trainer_rng_per_rank(tiny_model_path, monkeypatch):
    """An engine that reseeds the global RNGs at startup (in-process vLLM does, with its engine seed
    rollout.seed + rank // tp, the same on both ranks of a TP group here) does not leave ranks on the
    same torch stream: after the build each rank draws from rollout.seed + rank."""
    from corewarding.workers import fsdp_worker

    seeds = []

    def make(settings, model_path, tokenizer, device):
        seeds.append(settings.seed)
        random.seed(settings.seed)
        np.random.seed(settings.seed)
        torch.manual_seed(settings.seed)
        return RecordingEngine()

    monkeypatch.setattr(fsdp_worker, "make_engine", make)
    config = make_config(
        tiny_model_path,
        **{"actor_rollout_ref.rollout.seed": 5, "actor_rollout_ref.rollout.tensor_model_parallel_size": 2},
    )
    draws = []
    for rank in (0, 1):
        worker = fsdp_worker.ActorRolloutRefWorker(config, rank=rank, world_size=2)
        worker.tokenizer, worker.attn_impl = load_tokenizer(str(tiny_model_path)), "sdpa"
        worker._build_rollout(tp_group=None)
        draws.append(torch.rand(4))
        assert torch.equal(draws[-1], torch.rand(4, generator=torch.Generator().manual_seed(5 + rank)))
    assert seeds == [5, 5] and not torch.equal(draws[0], draws[1])


# -- tensor-parallel rollout groups (tp = 2 of 4 spawned gloo ranks) --------------------------------

TP_WORLD, TP = 4, 2
TP_PROMPTS = [[[5, 6, 7], [8]], [[9, 10, 11, 12]], [[13], [14, 15], [16, 17, 18]], [[19, 20]]]  # unequal counts


def _tp_rank(rank: int, port: int, model_path: str, out_dir: str) -> None:
    """One spawned worker of a tp=2 world of 4: the distributed setup of init_model (no models),
    a recording engine, one sampled rollout of this rank's prompts."""
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    config = make_config(
        Path(model_path),
        **{"trainer.n_gpus_per_node": TP_WORLD, "actor_rollout_ref.rollout.tensor_model_parallel_size": TP},
    )
    engine = RecordingEngine()
    worker = bare_worker(config, engine, IdsTokenizer(), rank=rank, world_size=TP_WORLD)
    worker.rollout.tp_group = worker._init_distributed()
    out = generate(worker, ids_batch(TP_PROMPTS[rank]))
    torch.save({"prompts": engine.prompts, "draws": engine.draws, "seeds": engine.seeds, "out": out},
               Path(out_dir) / f"rank{rank}.pt")
    worker.leave_process_group()


@pytest.fixture(scope="module")
def tp_run(tiny_model_path, tmp_path_factory) -> list[dict]:
    out_dir = tmp_path_factory.mktemp("tp")
    port = free_port()
    run_spawned_ranks(_tp_rank, [(rank, port, str(tiny_model_path), str(out_dir)) for rank in range(TP_WORLD)], timeout=300)
    return [torch.load(out_dir / f"rank{rank}.pt", weights_only=False) for rank in range(TP_WORLD)]


def test_tp_group_generates_the_union_in_lock_step(tp_run):
    """Ranks (0, 1) and (2, 3) each give their group's prompts, in rank order, to the engine and
    sample with the same randomness (rollout stream rollout.seed + rank // tp); the groups differ."""
    for first in range(0, TP_WORLD, TP):
        union = [p for rank in range(first, first + TP) for p in TP_PROMPTS[rank]]
        for rank in range(first, first + TP):
            assert tp_run[rank]["prompts"] == [union]
        assert tp_run[first]["draws"] == tp_run[first + 1]["draws"]
    assert tp_run[0]["draws"] != tp_run[2]["draws"]


def test_tp_group_hands_the_engine_one_explicit_seed(tp_run):
    """Every sampled request carries a seed drawn from the rollout stream, the same on the ranks of a
    TP group (vLLM's GPU runner V2 would otherwise seed each rank from its own numpy generator)."""
    seeds = [run["seeds"] for run in tp_run]
    assert all(len(s) == 1 and s[0] is not None for s in seeds), seeds
    assert seeds[0] == seeds[1] and seeds[2] == seeds[3] and seeds[0] != seeds[2]


def test_tp_rank_keeps_the_rollouts_of_its_own_prompts(tp_run, tiny_model_path):
    """Each rank's result with tp=2 is exactly what a tp=1 worker makes of its own prompts."""
    for rank, result in enumerate(tp_run):
        alone = bare_worker(make_config(tiny_model_path), RecordingEngine(), IdsTokenizer())
        expected = generate(alone, ids_batch(TP_PROMPTS[rank]))
        got = result["out"]
        assert set(got.tensors) == set(expected.tensors) and got.rows == expected.rows
        for key, value in expected.tensors.items():
            assert torch.equal(got.tensors[key], value), (rank, key)


def test_compute_log_prob_matches_plain_hf(setup):
    reset(setup)
    batch = rollout_batch(num_prompts=5, seed=1)
    got = setup["group"].compute_log_prob(batch, with_entropy=True, with_self_certainty=True)
    ref = setup["group"].compute_log_prob(batch, model="ref")
    assert set(got.tensors) == {"old_log_probs", "entropy", "self_certainty"} and set(ref.tensors) == {"ref_log_probs"}
    logits = reference_logits(load_plain(setup["path"], dtype=torch.float64), batch)  # the exact values
    logp = torch.log_softmax(logits, -1).gather(-1, batch["responses"][..., None]).squeeze(-1)
    probs = torch.softmax(logits, -1)
    entropy = -(probs * torch.log_softmax(logits, -1)).sum(-1)
    self_certainty = torch.logsumexp(logits, -1) - logits.mean(-1)
    mask = batch["response_mask"]  # 0 on padding
    logp, entropy, self_certainty = logp * mask, entropy * mask, self_certainty * mask
    assert_rel_close(got["old_log_probs"], logp, FORWARD_REL, "old_log_probs")
    assert_rel_close(ref["ref_log_probs"], logp, FORWARD_REL, "ref_log_probs")
    assert_rel_close(got["entropy"], entropy, FORWARD_REL, "entropy")
    assert_rel_close(got["self_certainty"], self_certainty, FORWARD_REL, "self_certainty")


def training_batch(setup, seed: int, num_prompts: int = 8) -> Batch:
    batch = rollout_batch(num_prompts=num_prompts, seed=seed)
    group = setup["group"]
    old = group.compute_log_prob(batch)["old_log_probs"]
    refl = group.compute_log_prob(batch, model="ref")["ref_log_probs"]
    g = torch.Generator().manual_seed(seed + 100)
    tensors = dict(batch.tensors)
    tensors["old_log_probs"] = old + 0.2 * torch.randn(old.shape, generator=g)  # ratios off 1: clipping bites
    tensors["ref_log_probs"] = refl + 0.1 * torch.randn(refl.shape, generator=g)
    tensors["advantages"] = torch.randn(len(batch), generator=g)
    return Batch(tensors=tensors, rows=batch.rows)


def reference_update(model, batch: Batch, config: Config, world: int = 2):
    """One update_actor call in plain single-process torch: per mini-batch j, the token-mean loss
    over the mini-batch's rows of every rank (the exact mini-batch aggregate), clip, AdamW."""
    from corewarding.algos import agg_loss, kl_penalty, policy_loss

    a = config.actor_rollout_ref.actor
    optim = torch.optim.AdamW(
        model.parameters(),
        lr=LR,
        betas=a.optim.betas,
        eps=a.optim.eps,
        weight_decay=a.optim.weight_decay,
    )
    mini = a.ppo_mini_batch_size * N // world
    chunks = batch.chunk(world)
    model.train()
    norms = []
    for j in range(len(chunks[0]) // mini):
        optim.zero_grad()
        mb = Batch.concat([chunk.select(range(j * mini, (j + 1) * mini)) for chunk in chunks])
        out = model(input_ids=mb["input_ids"], attention_mask=mb["attention_mask"], position_ids=mb["position_ids"])
        logsm = torch.log_softmax(out.logits[:, -R - 1 : -1].float() / TEMPERATURE, dim=-1)
        logp = logsm.gather(-1, mb["responses"][..., None]).squeeze(-1)
        entropy = -(logsm.exp() * logsm).sum(-1)
        mask = mb["response_mask"]
        pg, _ = policy_loss(logp, mb["old_log_probs"], mb["advantages"], mask, 0.2, 0.2, 3.0, "token-mean")
        kl = agg_loss(kl_penalty(logp, mb["ref_log_probs"], "low_var_kl"), mask, "token-mean")
        (pg - a.entropy_coeff * agg_loss(entropy, mask) + a.kl_loss_coef * kl).backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), a.grad_clip)))
        optim.step()
    return norms


def assert_states_equal(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key




def test_update_actor_matches_single_process(setup):
    reset(setup)
    group = setup["group"]
    batch = training_batch(setup, seed=2)
    results = ray.get([w.update_actor.remote(c, rollouts_per_prompt=N) for w, c in zip(group.workers, batch.chunk(2))])
    metrics = results[0].metrics
    assert results[0].metrics == results[1].metrics  # reduced over ranks: the same dict everywhere
    for key in ("pg_loss", "pg_clipfrac", "pg_clipfrac_lower", "ppo_kl", "kl_loss", "entropy_loss", "grad_norm", "lr"):
        assert f"actor/{key}" in metrics and torch.isfinite(torch.tensor(metrics[f"actor/{key}"]))
    assert metrics["actor/lr"] == pytest.approx(LR)
    assert metrics["actor/pg_clipfrac"] > 0
    after = full_state(setup)

    model = load_plain(setup["path"])
    before = {k: v.clone() for k, v in model.state_dict().items() if k in after}
    norms = reference_update(model, batch, setup["config"])
    expected = {k: v for k, v in model.state_dict().items() if k in after}
    assert max((after[k] - before[k]).abs().max().item() for k in after) > 1e-4  # the weights moved
    # two FSDP ranks against one process, both float32: the weights agree to a few epsilons of their
    # size (an update is ~lr, so the difference after - before would carry the weights' rounding / lr)
    assert_all_rel_close(after, expected, WEIGHTS_REL, "weights")
    assert metrics["actor/grad_norm"] == pytest.approx(sum(norms) / len(norms), rel=1e-4)
    assert group.get_versions()["policy"] == 1


def test_update_teacher_is_ema(setup):
    reset(setup)
    group = setup["group"]
    batch = training_batch(setup, seed=3)
    group.update_actor(batch, rollouts_per_prompt=N)
    policy, teacher = full_state(setup, "actor"), full_state(setup, "ref")
    group.update_teacher(0.7)
    new_teacher = full_state(setup, "ref")
    assert_ema(new_teacher, teacher, policy, 0.7)
    assert torch.equal(full_state(setup, "actor")["model.norm.weight"], policy["model.norm.weight"])
    assert group.get_versions()["teacher"] == 1


def test_teacher_generation_uses_teacher_weights(setup, tokenizer):
    """Teacher rollouts sample with the teacher's weights, policy rollouts with the policy's; the
    rollout RNG comes back with every reset (the initial checkpoint), so equal weights sample equal
    responses. Weights are pushed only when the engine lacks them."""
    group = setup["group"]
    prompts = prompt_batch(tokenizer, ["one plus one", "the sky is", "count: 1 2 3", "x"])
    width = max(len(p) for p in prompts.rows["prompt_ids"])

    def sample(role: str):
        return group.generate_sequences(prompts, role=role, prompt_width=width)

    reset(setup)
    first = sample("teacher")
    assert first.weight_sync_s > 0  # load_checkpoint invalidated the engine's weights
    assert sample("teacher").weight_sync_s == 0.0  # teacher already in the engine
    reset(setup)
    assert torch.equal(sample("teacher").rollouts["responses"], first.rollouts["responses"])  # same weights, same RNG
    reset(setup)
    assert torch.equal(sample("policy").rollouts["responses"], first.rollouts["responses"])  # teacher == policy so far

    reset(setup)
    for seed in (4, 5):  # the rollout RNG is untouched by updates
        group.update_actor(training_batch(setup, seed=seed), rollouts_per_prompt=N)
    teacher = sample("teacher")
    assert torch.equal(teacher.rollouts["responses"], first.rollouts["responses"])  # the teacher did not move
    reset(setup)
    for seed in (4, 5):
        group.update_actor(training_batch(setup, seed=seed), rollouts_per_prompt=N)
    policy = sample("policy")
    assert not torch.equal(policy.rollouts["responses"], first.rollouts["responses"])  # the policy did


def test_checkpoint_round_trip_is_exact(setup):
    reset(setup)
    group = setup["group"]
    b1, b2 = training_batch(setup, seed=6), training_batch(setup, seed=7)
    group.update_actor(b1, rollouts_per_prompt=N)
    group.update_teacher(0.5)
    ckpt = setup["tmp"] / "step1"
    group.save_checkpoint(str(ckpt))
    assert (ckpt / "actor" / "model.safetensors").exists() and (ckpt / "actor" / "config.json").exists()
    assert (ckpt / "ref" / "model.safetensors").exists() and (ckpt / "rng" / "rank_1.json").exists()
    straight = group.update_actor(b2, rollouts_per_prompt=N)
    sample_straight = generate(group, prompt_batch_from(b2))
    state_straight = full_state(setup)

    reset(setup)  # something else in between
    group.load_checkpoint(str(ckpt))
    resumed = group.update_actor(b2, rollouts_per_prompt=N)
    sample_resumed = generate(group, prompt_batch_from(b2))
    assert resumed.metrics == straight.metrics
    assert_states_equal(full_state(setup), state_straight)
    assert torch.equal(sample_resumed["responses"], sample_straight["responses"])  # RNG restored too

    export = setup["tmp"] / "export"
    group.export_hf(str(export), "ref")
    plain = load_plain(export)
    ref_state = full_state(setup, "ref")
    assert_states_equal({k: v for k, v in plain.state_dict().items() if k in ref_state}, ref_state)


def test_a_reference_that_never_moved_is_not_saved(setup):
    """Until the EMA teacher's first update the reference is the model folder: a checkpoint does not
    write it again (at 8B that is 33 GB per save), and loading one puts the model folder back."""
    reset(setup)
    group = setup["group"]
    group.update_actor(training_batch(setup, seed=8), rollouts_per_prompt=N)
    ckpt = setup["tmp"] / "frozen-ref"
    group.save_checkpoint(str(ckpt))
    assert not (ckpt / "ref").exists()
    assert json.loads((ckpt / "actor" / "optim" / "state.json").read_text())["ref_saved"] is False
    group.update_teacher(0.5)  # the reference moves away from the model folder
    state_file = ckpt / "actor" / "optim" / "state.json"
    state = json.loads(state_file.read_text())
    state_file.write_text(json.dumps({**state, "model_path": "/models/another"}))
    with pytest.raises(Exception, match="did not save its reference model, which is the model folder the run started "
                                        "from \\(/models/another\\)"):
        group.load_checkpoint(str(ckpt))  # a resume on another base model would change the reference
    state_file.write_text(json.dumps(state))
    group.load_checkpoint(str(ckpt))
    plain = load_plain(setup["path"]).state_dict()
    ref_state = full_state(setup, "ref")
    assert_states_equal({k: v for k, v in plain.items() if k in ref_state}, ref_state)
    assert group.get_versions()["teacher"] == 0


def minibatch_order(rows: int, world: int, per_rank: int) -> list[int]:
    """The row order that gives one worker the mini-batches `world` workers form: mini-batch j of
    the group is rows j*per_rank .. (j+1)*per_rank of every rank's consecutive chunk."""
    chunk = rows // world
    return [r * chunk + j * per_rank + i for j in range(chunk // per_rank) for r in range(world) for i in range(per_rank)]


def optimizer_files(ckpt: Path) -> list[dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    return [load_file(str(f)) for f in sorted((ckpt / "actor" / "optim").glob("rank_*.safetensors"))]


def assert_same_update(actual, expected) -> None:
    """Two updates of the same weights on the same mini-batches by different worker counts: the same
    sums in another order (per-rank partial sums, then the all-reduce). The losses are means of ~50
    float32 terms of size <= 10, so reordering moves them by ~1e-6 at most; the gradient norm
    within GRAD_REL of itself."""
    for key in ("actor/pg_loss", "actor/kl_loss", "actor/entropy_loss", "actor/ppo_kl"):
        assert actual.metrics[key] == pytest.approx(expected.metrics[key], rel=1e-5, abs=1e-6), key
    assert actual.metrics["actor/grad_norm"] == pytest.approx(expected.metrics["actor/grad_norm"], rel=GRAD_REL)


def test_a_checkpoint_resumes_on_another_worker_count(setup, tiny_model_path):
    """2 -> 1 -> 2 workers: the optimizer moments are re-sliced exactly (the one worker's shard is the
    two shards end to end; back on two workers the shards are the saved ones, bit for bit), the
    weights, teacher and counters come back, and the next update equals the one a run that kept
    its worker count makes, up to summation order (uneven shards: test_resharding.py)."""
    from safetensors.torch import load_file

    from corewarding.workers.local_group import LocalWorkerGroup

    reset(setup)
    group, tmp = setup["group"], setup["tmp"]
    group.update_actor(training_batch(setup, seed=11), rollouts_per_prompt=N)
    group.update_teacher(0.5)
    by_two = tmp / "by_two"
    group.save_checkpoint(str(by_two))
    following = training_batch(setup, seed=12)
    kept_two = group.update_actor(following, rollouts_per_prompt=N)
    after_two = full_state(setup)

    environ, threads = dict(os.environ), torch.get_num_threads()
    one = LocalWorkerGroup(make_config(tiny_model_path, **{"trainer.n_gpus_per_node": 1}))
    try:
        one.init_model(10)
        one.load_checkpoint(str(by_two))
        assert all(g["fused"] for g in one.workers[0].optimizer.param_groups)  # one kernel, not a loop over tensors
        by_one = tmp / "by_one"
        one.save_checkpoint(str(by_one))
        halves, (whole,) = optimizer_files(by_two), optimizer_files(by_one)
        assert set(whole) == set(halves[0])
        for name, value in whole.items():  # exp_avg / exp_avg_sq sharded on dim 0, step whole on each rank
            assert torch.equal(value, torch.cat([h[name] for h in halves]) if value.dim() else halves[0][name]), name
        for part in ("actor", "ref"):
            assert_states_equal(*(load_file(str(c / part / "model.safetensors")) for c in (by_one, by_two)))
        assert one.get_versions() == {"policy": 1, "teacher": 1, "skipped_steps": 0}
        per_rank = setup["config"].actor_rollout_ref.actor.ppo_mini_batch_size * N // 2
        order = minibatch_order(len(following), world=2, per_rank=per_rank)
        went_one = one.update_actor(following.select(order), rollouts_per_prompt=N)
        assert_same_update(went_one, kept_two)
        assert_all_rel_close(one.get_full_state_dict(), after_two, WEIGHTS_REL, "weights 2 -> 1")

        group.load_checkpoint(str(by_one))
        again = tmp / "by_two_again"
        group.save_checkpoint(str(again))
        for saved, resaved in zip(optimizer_files(by_two), optimizer_files(again), strict=True):
            assert_states_equal(resaved, saved)
        went_two = group.update_actor(following, rollouts_per_prompt=N)
        assert_same_update(went_two, went_one)  # 1 -> 2 against the run that kept its one worker
        assert went_two.metrics == kept_two.metrics  # the very state the two workers had saved
    finally:
        one.leave_process_group()
        one.close()
        torch.set_num_threads(threads)
        os.environ.clear()
        os.environ.update(environ)


def test_workers_ignore_the_preemption_signals(setup):
    """A cluster may signal every process of the job: the workers outlive SIGTERM and SIGUSR1
    (trainer.preemption_signals) and keep answering; the driver decides when they stop."""
    import signal
    import time

    group = setup["group"]
    pids = ray.get([worker.__ray_call__.remote(lambda self: os.getpid()) for worker in group.workers])
    for pid in pids:
        os.kill(pid, signal.SIGUSR1)
        os.kill(pid, signal.SIGTERM)
    time.sleep(2)
    assert ray.get([worker.__ray_call__.remote(lambda self: os.getpid()) for worker in group.workers], timeout=60) == pids
    assert len(ray.get([worker.get_versions.remote() for worker in group.workers])) == 2


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


class _Bomb:
    """Unpickling it creates a folder: proof that a checkpoint file ran code when loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_checkpoint_files_load_without_unpickling(setup):
    """Nothing in a checkpoint is a pickle (a checkpoint from someone else cannot run code on the
    workers): only safetensors and JSON, and pickles planted where the old format kept its
    optimizer extras, DCP metadata and RNG states are never read."""
    import pickle

    reset(setup)
    group = setup["group"]
    group.update_actor(training_batch(setup, seed=9), rollouts_per_prompt=N)
    ckpt = setup["tmp"] / "no_pickle"
    group.save_checkpoint(str(ckpt))
    kinds = {f.suffix for f in ckpt.rglob("*") if f.is_file()}
    assert kinds <= {".safetensors", ".json", ".jinja", ".txt"}, kinds
    assert all(f.read_bytes()[:1] != b"\x80" for f in ckpt.rglob("*") if f.is_file())  # no pickle stream
    expected = state_after_load(setup, ckpt)
    marker = setup["tmp"] / "pwned"
    bomb = pickle.dumps(_Bomb(marker))
    for planted in ("actor/optim/extra.pt", "actor/optim/.metadata", "actor/optim/__0_0.distcp", "rng/rank_0.pt", "rng/rank_1.pt"):
        (ckpt / planted).write_bytes(bomb)
    assert state_after_load(setup, ckpt) == expected
    assert not marker.exists()


def state_after_load(setup, ckpt: Path):
    """What a resumed worker does next: its counters, one update (optimizer state) and one sample (RNG)."""
    group = setup["group"]
    group.load_checkpoint(str(ckpt))
    batch = training_batch(setup, seed=10)
    metrics = group.update_actor(batch, rollouts_per_prompt=N)
    sample = generate(group, prompt_batch_from(batch))["responses"].tolist()
    return ray.get([worker.get_versions.remote() for worker in group.workers]), metrics, sample


def test_old_pickle_checkpoints_are_refused_with_a_reason(setup):
    group = setup["group"]
    old = setup["tmp"] / "old_format"
    group.save_checkpoint(str(old))
    (old / "actor" / "optim" / "state.json").rename(old / "actor" / "optim" / "extra.pt")
    with pytest.raises(Exception, match="older version in a pickle format"):
        group.load_checkpoint(str(old))


def test_a_corrupt_checkpoint_file_fails_every_rank_at_once(setup):
    """Rank 0 alone reads the policy's weights and then broadcasts them: a truncated file must not
    leave rank 1 waiting in the broadcast."""
    import shutil

    group = setup["group"]
    bad = setup["tmp"] / "truncated"
    shutil.copytree(setup["initial"], bad)
    weights = bad / "actor" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    refs = [worker.load_checkpoint.remote(str(bad)) for worker in group.workers]
    for ref in refs:
        with pytest.raises(Exception, match=r"cannot read .*actor/model.safetensors on rank 0"):
            ray.get(ref, timeout=120)
    reset(setup)  # the group still works


FAILED_WRITES = [(0,), (1,), (0, 1), ()]  # the ranks whose write fails, one case each


def _agree_rank(rank: int, ports: list[int], out_dir: str) -> None:
    """Every case of FAILED_WRITES in turn, each in a process group of its own (one spawn of the two
    ranks for all cases: a spawned process imports this module, seconds of start-up)."""
    import errno
    import time

    import torch.distributed as dist

    from corewarding.storage import WorkerCheckpointError
    from corewarding.workers.checkpoint.worker_state import agree_on_error

    os.environ.update(GLOO_SOCKET_IFNAME="lo")
    for case, (fail_on, port) in enumerate(zip(FAILED_WRITES, ports)):
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
        error = OSError(errno.ENOSPC, "No space left on device", f"/ckpt/rank{rank}") if rank in fail_on else None
        start = time.monotonic()
        try:
            agree_on_error(error, "write failed", rank, 2)
            message = "no error"
        except WorkerCheckpointError as exc:
            message = str(exc)
        Path(out_dir, f"case{case}_rank{rank}.txt").write_text(f"{time.monotonic() - start:.3f}\n{message}")
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def failed_write_agreements(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("agree")
    ports = [free_port() for _ in FAILED_WRITES]
    run_spawned_ranks(_agree_rank, [(rank, ports, str(out)) for rank in range(2)], timeout=120)
    return out


@pytest.mark.parametrize("case", range(len(FAILED_WRITES)), ids=[f"fail_on{c}" for c in FAILED_WRITES])
def test_all_ranks_learn_of_a_failed_write_together(case, failed_write_agreements):
    """A write that fails on one rank (rank 0 writing the models while the others wait) makes every
    rank raise the same one-line error at once, not a hang until the distributed timeout."""
    fail_on = FAILED_WRITES[case]
    results = [(failed_write_agreements / f"case{case}_rank{r}.txt").read_text().split("\n", 1) for r in range(2)]
    messages = {message for _, message in results}
    assert len(messages) == 1 and all(float(seconds) < 10 for seconds, _ in results)
    (message,) = messages
    if not fail_on:
        assert message == "no error"
        return
    assert message.startswith(f"write failed on rank {fail_on[0]}: disk full: No space left on device (/ckpt/rank{fail_on[0]})")
    assert ("and on 1 more ranks" in message) == (len(fail_on) == 2) and "\n" not in message


def prompt_batch_from(batch: Batch) -> Batch:
    """The prompts (as token-id lists) of a rollout batch, one per group of N rollouts."""
    first = batch.select(range(0, len(batch), N))
    width = first["input_ids"].shape[1] - R
    ids, mask = first["input_ids"][:, :width], first["attention_mask"][:, :width]
    return Batch(rows={"prompt_ids": [row[m.bool()].tolist() for row, m in zip(ids, mask)]})


def test_errors(setup, tiny_model_path):
    from corewarding.workers.fsdp_worker import ActorRolloutRefWorker

    group = setup["group"]
    with pytest.raises(ValueError, match="data.train_batch_size"):
        group.compute_log_prob(rollout_batch(num_prompts=3, seed=0).select(range(5)))
    batch = training_batch(setup, seed=8, num_prompts=6)  # 6 rows per rank, mini-batch of 4
    with pytest.raises(Exception, match="ppo_mini_batch_size"):
        group.update_actor(batch, rollouts_per_prompt=N)
    bad = make_config(tiny_model_path, **{"actor_rollout_ref.model.path": "/nonexistent/model"})
    with pytest.raises(FileNotFoundError, match="actor_rollout_ref.model.path"):
        ActorRolloutRefWorker(bad, rank=0, world_size=1).init_model(total_steps=10)
    with pytest.raises(Exception, match="incomplete"):
        group.load_checkpoint(str(setup["tmp"] / "nothing-here"))
