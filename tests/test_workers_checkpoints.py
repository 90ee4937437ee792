"""The FSDP2 worker group's checkpoints on CPU (2 Ray actors, gloo, a tiny random Llama): an exact
round trip, a reference that never moved, a resume on another worker count, no pickles, and a
corrupt file or a failed write that every rank learns of at once (spawned gloo ranks)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from corewarding.batch import Batch
from corewarding.workers.ports import free_port
from numerics import GRAD_REL, WEIGHTS_REL, assert_all_rel_close
from spawned_ranks import run_spawned_ranks
from worker_setup import N, R, full_state, generate, load_plain, make_config, reset, training_batch
from worker_setup import setup  # fixture

pytestmark = pytest.mark.slow

ray = pytest.importorskip("ray")


def assert_states_equal(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


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
