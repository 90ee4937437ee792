"""The FSDP2 worker group on CPU: 2 Ray actors (gloo), a tiny random Llama. Generation, log-probs
and the actor and EMA-teacher updates, checked against plain single-process torch computations;
preemption signals and refused input (its checkpoints: test_workers_checkpoints.py)."""

from __future__ import annotations

import os

import pytest
import torch

from corewarding.batch import Batch
from corewarding.config import Config
from corewarding.data import left_pad
from numerics import FORWARD_REL, WEIGHTS_REL, assert_all_rel_close, assert_ema, assert_rel_close
from worker_setup import (LR, N, R, TEMPERATURE, full_state, load_plain, make_config, prompt_batch, reset,
                          rollout_batch, training_batch)
from worker_setup import setup, tokenizer  # fixture

pytestmark = pytest.mark.slow

ray = pytest.importorskip("ray")


def reference_logits(model, batch: Batch) -> torch.Tensor:
    with torch.no_grad():
        out = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=batch["position_ids"]
        )
    return out.logits[:, -R - 1 : -1] / TEMPERATURE


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
