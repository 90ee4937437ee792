"""A worker's rollouts without Ray or models: the packing of engine outputs, the engine's call order
(wake-up, weight pushes, sleep, close) and RNG seeding, with scripted and recording engines, and
tensor-parallel rollout groups of spawned gloo ranks."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from corewarding.batch import Batch
from corewarding.config import Config
from corewarding.data import load_tokenizer
from corewarding.workers.ports import free_port
from corewarding.workers.rollout.base import RolloutOutput
from spawned_ranks import run_spawned_ranks
from worker_setup import N, R, TEMPERATURE, generate, make_config, prompt_batch
from worker_setup import tokenizer  # fixture

pytestmark = pytest.mark.slow


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
