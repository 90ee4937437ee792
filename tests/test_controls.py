"""The controls of Spurious Rewards (random, format, incorrect) and the EMPO baseline on hand-made
batches, their presets, and one two-step CPU run of the random reward."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from corewarding.batch import Batch
from corewarding.config import compose_config, load_config
from corewarding.methods import METHODS, resolve_method, try_method
from corewarding.rewards import answers as answers_mod
from corewarding.rewards import answers_equivalent, empo, format_reward, hendrycks_equivalent, incorrect, random_reward
from corewarding.rewards.controls import OFFSETS, wrong_label
from corewarding.roles import Roles

from one_process_run import one_process_overrides, run_in_process

REPO = Path(__file__).resolve().parents[1]
CPU = ["trainer.device=cpu", "actor_rollout_ref.rollout.name=hf", "trainer.n_gpus_per_node=2"]


@pytest.fixture(autouse=True)
def generous_default_timeout(monkeypatch):
    """Rewards must not depend on machine load in the tests (see test_rewards_answers.py)."""
    monkeypatch.setattr(answers_mod, "DEFAULT_TIMEOUT", 30.0)


def resp(answer: str | None) -> str:
    return "no final answer" if answer is None else f"so the answer is \\boxed{{{answer}}}."


def rollouts(questions: int, n: int, step: int = 1, texts: list[str] | None = None) -> Batch:
    """`questions` x `n` rollouts as the trainer's reward sees them: uid `<step>-<row>`, the data's index."""
    rows = {"uid": [f"{step}-{q}" for q in range(questions) for _ in range(n)],
            "index": [100 + q for q in range(questions) for _ in range(n)],
            "data_source": ["arith"] * (questions * n), "sample_index": list(range(n)) * questions,
            "ground_truth": ["4"] * (questions * n)}
    rows["response_text"] = texts if texts is not None else [resp(str(i % 5)) for i in range(questions * n)]
    return Batch(rows=rows)


# --------------------------------------------------------------------------------------------
# random
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [0.3, 0.5])
def test_random_reward_rate_is_p(p):
    scores = random_reward(rollouts(250, 8), gt_scorer="hendrycks", p=p).scores
    assert scores.shape == (2000,) and set(scores.tolist()) <= {0.0, 1.0}
    assert abs(scores.mean().item() - p) < 0.03  # 2000 draws: the standard error is ~0.011
    assert random_reward(rollouts(4, 8), gt_scorer="hendrycks", p=0.0).scores.sum() == 0
    assert random_reward(rollouts(4, 8), gt_scorer="hendrycks", p=1.0).scores.sum() == 32
    with pytest.raises(ValueError, match=r"reward_kwargs.p=1.5 must be in \[0, 1\]"):
        random_reward(rollouts(1, 2), gt_scorer="hendrycks", p=1.5)


def test_random_reward_is_the_same_for_the_same_rollouts_whatever_the_rng_state():
    batch = rollouts(8, 8)
    torch.manual_seed(1)
    random.seed(1)
    first = random_reward(batch, gt_scorer="hendrycks").scores
    state = torch.random.get_rng_state()
    torch.manual_seed(2)
    random.seed(2)
    assert torch.equal(random_reward(batch, gt_scorer="hendrycks").scores, first)
    torch.manual_seed(1)
    assert torch.equal(torch.random.get_rng_state(), state)  # the reward draws nothing from torch's generator
    order = list(range(len(batch)))[::-1]  # rows in another order: each row keeps its draw
    assert torch.equal(random_reward(batch.select(order), gt_scorer="hendrycks").scores, first[order])
    other_text = rollouts(8, 8, texts=[resp("9")] * 64)
    assert torch.equal(random_reward(other_text, gt_scorer="hendrycks").scores, first)  # not an input
    assert not torch.equal(random_reward(rollouts(8, 8, step=2), gt_scorer="hendrycks").scores, first)  # a new step
    assert not torch.equal(random_reward(batch, gt_scorer="hendrycks", seed=1).scores, first)


def test_random_reward_pins_its_draws():
    """The draws of a checkpoint written by an earlier version are those a resumed run makes now."""
    scores = random_reward(rollouts(2, 8), gt_scorer="hendrycks").scores.tolist()
    assert scores == [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0]


def test_random_and_incorrect_draw_the_same_in_a_fresh_process():
    """A resumed run is another process, with its own hash seed and generators: the same rewards."""
    code = ("import json; from test_controls import rollouts; from corewarding.rewards import random_reward, incorrect; "
            "b = rollouts(4, 8); print(json.dumps([random_reward(b, gt_scorer='hendrycks').scores.tolist(), "
            "incorrect(b, gt_scorer='hendrycks').rows['pseudo_label']]))")
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": f"{REPO / 'tests'}{os.pathsep}{REPO}"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, timeout=300)
    there = json.loads(out.stdout.strip().splitlines()[-1])
    batch = rollouts(4, 8)
    assert there == [random_reward(batch, gt_scorer="hendrycks").scores.tolist(),
                     incorrect(batch, gt_scorer="hendrycks").rows["pseudo_label"]]


def test_the_trainers_uids_carry_the_step_and_are_formed_again_on_resume():
    """The random reward's draws change every step because the trainer's uid does: `<step>-<row>`."""
    from corewarding.trainer.ray_trainer import Trainer

    stub = SimpleNamespace(roles=Roles(None, "original"))
    prompts = Batch(rows={"prompt_ids": [[1], [2]], "index": [7, 8]})
    policy, teacher = Trainer._prepare_prompts(stub, prompts, step=3)
    assert policy.rows["uid"] == ["3-0", "3-1"] and teacher is None
    assert Trainer._prepare_prompts(stub, prompts, step=3, gen=2)[0].rows["uid"] == ["3-2-0", "3-2-1"]


def test_random_reward_metrics():
    batch = Batch(rows={"uid": ["1-0"] * 4, "index": [5] * 4, "data_source": ["arith"] * 4, "sample_index": [0, 1, 2, 3],
                        "ground_truth": ["4"] * 4, "response_text": [resp("4"), resp("5"), resp(None), resp("4")]})
    out = random_reward(batch, gt_scorer="math_verify")
    scores = out.scores.tolist()
    right = [True, False, False, True]
    assert out.rows == {"answer": ["4", "5", None, "4"], "pseudo_label": [None] * 4}
    assert out.metrics["gt_acc"] == 0.5 and out.metrics["answer_present"] == 0.75
    rewarded = [r for s, r in zip(scores, right) if s]
    assert out.metrics.get("rewarded_gt_acc") == (sum(rewarded) / len(rewarded) if rewarded else None)


# --------------------------------------------------------------------------------------------
# format
# --------------------------------------------------------------------------------------------


def test_format_rewards_a_non_empty_box():
    texts = ["so \\boxed{12}", "so \\boxed{}", "so \\boxed{ }", "the answer is 12", "\\boxed{1} then \\boxed{3",
             "\\fbox{x+1}", "\\boxed 7"]
    batch = Batch(rows={"response_text": texts, "ground_truth": ["12", "12", "12", "12", "1", "x+1", "8"]})
    out = format_reward(batch, gt_scorer="math_verify")
    assert out.scores.tolist() == [1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0]
    assert out.rows == {"answer": ["12", None, None, None, None, "x+1", "7"], "pseudo_label": [None] * 7}
    assert out.metrics["answer_present"] == pytest.approx(3 / 7) and out.metrics["gt_acc"] == pytest.approx(2 / 7)
    assert out.metrics["rewarded_gt_acc"] == pytest.approx(2 / 3)  # 12 and x+1 right, 7 wrong


# --------------------------------------------------------------------------------------------
# incorrect
# --------------------------------------------------------------------------------------------

TRUTHS = ["4", "12", "-3", "0", "9", "99", "0.05", "3.5", "\\frac{1}{2}", "\\frac{3}{4}", "2\\sqrt{3}", "x^2+1",
          "(1,2)", "1^{2}", "10^{0}", "\\frac{0}{3}", "B", "e", "\\pi", "\\text{odd}", "2^{10}", "1,000", "50\\%"]


@pytest.mark.parametrize("truth", TRUTHS)
def test_the_wrong_label_never_equals_the_ground_truth_and_is_stable(truth):
    labels = [wrong_label(truth, seed, "arith", index) for seed in range(3) for index in range(4)]
    wrong_label.cache_clear()
    assert labels == [wrong_label(truth, seed, "arith", index) for seed in range(3) for index in range(4)]
    for label in labels:
        if label is not None:
            assert not answers_equivalent(label, truth) and not hendrycks_equivalent(label, truth), (truth, label)


def test_the_wrong_label_rule_by_hand():
    assert {wrong_label("12", 0, "arith", i) for i in range(40)} == {"13", "14", "15"}  # every offset occurs
    assert {wrong_label("-3", 0, "arith", i) for i in range(40)} == {"-4", "-5", "-6"}
    assert {wrong_label("0.05", 0, "arith", i) for i in range(40)} == {"0.06", "0.07", "0.08"}
    assert {wrong_label("\\frac{1}{2}", 0, "arith", i) for i in range(40)} == {"\\frac{1}{3}", "\\frac{1}{4}", "\\frac{1}{5}"}
    assert {wrong_label("B", 0, "arith", i) for i in range(40)} == {"C", "D", "E"}
    assert {wrong_label("Z", 0, "arith", i) for i in range(40)} == {"A", "B", "C"}
    assert wrong_label("1^{2}", 0, "arith", 0) is None  # every candidate equals 1
    assert wrong_label("\\pi", 0, "arith", 0) is None and wrong_label("\\text{odd}", 0, "arith", 0) is None
    assert OFFSETS == (1, 2, 3)


def test_incorrect_rewards_the_wrong_label_only():
    label = wrong_label("12", 0, "arith", 3)
    texts = [resp(label), resp("12"), resp(None), resp(label), resp("\\pi"), resp("\\pi")]
    batch = Batch(rows={"response_text": texts, "ground_truth": ["12"] * 4 + ["\\pi"] * 2, "data_source": ["arith"] * 6,
                        "index": [3] * 4 + [4] * 2, "uid": ["1-0"] * 4 + ["1-1"] * 2, "sample_index": [0, 1, 2, 3, 0, 1]})
    out = incorrect(batch, gt_scorer="math_verify")
    assert out.scores.tolist() == [1.0, 0.0, 0.0, 1.0, 0.0, 0.0]
    assert out.rows["pseudo_label"] == [label] * 4 + [None] * 2
    assert out.metrics["gt_acc"] == pytest.approx(3 / 6) and out.metrics["rewarded_gt_acc"] == 0.0
    assert out.metrics["pseudo_label_acc"] == 0.0 and out.metrics["wrong_label_coverage"] == pytest.approx(4 / 6)
    assert incorrect(batch, gt_scorer="math_verify", seed=0).rows == out.rows


# --------------------------------------------------------------------------------------------
# EMPO
# --------------------------------------------------------------------------------------------


def test_empo_rewards_the_share_of_the_answer_class():
    answers = ["7", "7", "5", None, "7", "0.5", "\\frac{1}{2}", "2", None]
    batch = Batch(rows={"response_text": [resp(a) for a in answers], "uid": ["a"] * 5 + ["b"] * 4,
                        "sample_index": [0, 1, 2, 3, 4, 0, 1, 2, 3], "ground_truth": ["7"] * 5 + ["2"] * 4})
    out = empo(batch, equivalence="math", gt_scorer="math_verify")
    torch.testing.assert_close(out.scores, torch.tensor([3 / 5, 3 / 5, 1 / 5, 0.0, 3 / 5, 2 / 4, 2 / 4, 1 / 4, 0.0]))
    assert out.rows["pseudo_label"] == ["7"] * 5 + ["0.5"] * 4  # the majority vote's label, logged
    assert out.metrics["majority_ratio"] == pytest.approx((3 / 5 + 2 / 4) / 2)
    assert out.metrics["pseudo_label_acc"] == 0.5 and out.metrics["gt_acc"] == pytest.approx(4 / 9)
    rewarded = 3 * 3 / 5 + 1 / 5 + 2 / 4 + 2 / 4 + 1 / 4  # weights of the rollouts with a reward
    assert out.metrics["rewarded_gt_acc"] == pytest.approx((3 * 3 / 5 + 1 / 4) / rewarded)
    strings = empo(batch, equivalence="string", gt_scorer="math_verify")  # 0.5 and \frac{1}{2}: two classes
    torch.testing.assert_close(strings.scores[5:], torch.tensor([1 / 4, 1 / 4, 1 / 4, 0.0]))


# --------------------------------------------------------------------------------------------
# registry and presets
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, roles, kwargs", [
    ("random", (None, "original"), {"p": 0.5, "seed": 0}), ("format", (None, "original"), {}),
    ("incorrect", (None, "original"), {"seed": 0}), ("empo", ("policy", "original"), {}),
])
def test_the_preset_composes_and_loads(name, roles, kwargs):
    config = load_config(compose_config([f"+method={name}", *CPU]), check_paths=False)
    assert config.method is resolve_method(name) is METHODS[name]
    assert (config.roles.voters, config.roles.policy_views) == roles
    assert dict(config.reward_model.reward_kwargs) == kwargs
    assert config.actor_rollout_ref.rollout.gpu_memory_utilization == 0.6
    assert config.actor_rollout_ref.actor.kl_loss_coef == 0.005 and config.data.train_batch_size == 128
    assert config.method.ground_truth == (name == "incorrect")
    assert config.reward_model.vote_equivalence == ("math" if name == "empo" else "string")  # EMPO's classes: math
    try_method(config.method, config.method.options("math_verify", "string", kwargs))  # the contract holds


def test_the_scripts_name_the_new_methods():
    from corewarding.experiments.builtin_runs import LABELS, METHODS as RUNS, REPLICATED

    for name in ("random", "format", "incorrect", "empo"):
        assert resolve_method(RUNS[name]).name == name and LABELS[name] and name not in REPLICATED


# --------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_random_trains_two_cpu_steps(boxing_model, tmp_path):
    """The preset's method on CPU, two steps: the rewards reach the update and the metrics are logged."""
    from corewarding.data import write_builtin_dataset

    data = write_builtin_dataset(tmp_path / "data", n_train=8, n_val=4, seed=0)
    overrides = one_process_overrides(boxing_model, data, tmp_path / "ckpt", 2, 4, 4, "+method=random",
                                      "reward_model.reward_kwargs.p=0.5")
    steps = run_in_process(overrides)
    assert [s["step"] for s in steps] == [1, 2]
    for step in steps:
        assert step["reward/mean"] in {k / 8 for k in range(9)}  # 2 questions x 4 rollouts of 0 / 1
        assert 0.0 <= step["reward/gt_acc"] <= 1.0 and 0.0 <= step["reward/answer_present"] <= 1.0
        assert any(k.startswith("actor/") for k in step)
