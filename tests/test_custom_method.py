"""A method from a user's file (`custom_reward_function.path` / `.name`), `register_method`, and the
contract checked when the configuration loads. The worked example is taken from docs/custom-method.md
itself, so the page cannot drift from what runs."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
import torch

from corewarding.batch import Batch
from corewarding.config import compose_config, load_config
from corewarding.errors import ConfigError
from corewarding.methods import METHODS, Method, load_method, register_method, resolve_method
from corewarding.rewards import ComputeScoreError, VerlScore

from one_process_run import one_process_overrides, run_in_process

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "custom-method.md"
CPU = ["trainer.device=cpu", "actor_rollout_ref.rollout.name=hf", "trainer.n_gpus_per_node=2", "data.train_batch_size=4",
       "actor_rollout_ref.actor.ppo_mini_batch_size=4", "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
       "actor_rollout_ref.rollout.n=2"]


def example_code() -> str:
    """The python block of the page's worked example."""
    worked = PAGE.read_text().split("## A worked example", 1)[1]
    blocks = re.findall(r"```python\n(.*?)```", worked, re.DOTALL)
    assert len(blocks) == 1, "the worked example has one python block"
    return blocks[0]


def contract_example_code() -> str:
    """The python block of the page's short example of the batch contract."""
    section = PAGE.read_text().split("## The contract", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.DOTALL)[-1]


def verl_example_code() -> str:
    """The python block of the page's section on verl's compute_score."""
    section = PAGE.read_text().split("## verl's compute_score", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    assert len(blocks) == 1, "the verl section has one python block"
    return blocks[0]


@pytest.fixture(autouse=True)
def registry_restored():
    """Methods this file loads or registers do not outlive their test (the registry is global: a
    later test that lists it would see them)."""
    from corewarding import methods

    saved, saved_names = dict(methods.METHODS), dict(methods._BY_NAME)
    yield
    methods.METHODS.clear()
    methods.METHODS.update(saved)
    methods._BY_NAME.clear()
    methods._BY_NAME.update(saved_names)


@pytest.fixture
def example_file(tmp_path) -> Path:
    path = tmp_path / "soft_co_rewarding_ii.py"
    path.write_text(example_code())
    return path


def _user_file(tmp_path: Path, body: str, name: str = "mine.py") -> Path:
    path = tmp_path / name
    path.write_text("import torch\nfrom corewarding.rewards import RewardOutput\n\n" + body)
    return path


def _load(path: Path, name: str, *extra: str):
    overrides = [*CPU, f"custom_reward_function.path={path}", f"custom_reward_function.name={name}", *extra]
    return load_config(compose_config(overrides), check_paths=False)


def test_the_example_rewards_the_share_of_agreeing_teacher_rollouts(example_file):
    method = load_method(example_file, "METHOD")
    assert (method.name, method.votes, method.teacher) == ("soft_co_rewarding_ii", True, True)
    boxed = [f"so \\boxed{{{a}}}" if a else "no answer" for a in ("5", "7", None, "8")]
    batch = Batch(rows={"response_text": boxed, "uid": ["q", "q", "q", "r"]})
    teacher = Batch(rows={"response_text": [f"\\boxed{{{a}}}" for a in ("5", "5", "7", "8")], "uid": ["q", "q", "q", "r"]})
    out = method.reward_fn(**method.options("math_verify", "string", {}))(batch, teacher=teacher)
    torch.testing.assert_close(out.scores, torch.tensor([2 / 3, 1 / 3, 0.0, 1.0]))
    assert out.rows == {"answer": ["5", "7", None, "8"], "pseudo_label": ["5", "5", "5", "8"]}


@pytest.mark.slow
def test_the_example_trains_one_cpu_step(example_file, boxing_model, tmp_path):
    """The page's command on CPU: the Co-rewarding-II preset with the example's method, one step."""
    from corewarding.data import write_builtin_dataset

    data = write_builtin_dataset(tmp_path / "data", n_train=8, n_val=4, seed=0)
    overrides = one_process_overrides(
        boxing_model, data, tmp_path / "ckpt", 1, 2, 2, "+method=co_rewarding_ii",
        f"custom_reward_function.path={example_file}", "custom_reward_function.name=METHOD",
        "actor_rollout_ref.rollout.teacher_n=3", "actor_rollout_ref.ref.sliding_average.alpha_start=0.5")
    (step,) = run_in_process(overrides)
    assert step["step"] == 1 and 0.0 <= step["reward/mean"] <= 1.0
    assert "actor/pg_loss" in step or any(k.startswith("actor/") for k in step)


def test_a_plain_function_votes_when_it_takes_equivalence(tmp_path):
    path = _user_file(tmp_path, (
        "def compute_score(batch, teacher=None, *, gt_scorer, equivalence):\n"
        "    n = len(batch)\n"
        "    return RewardOutput(torch.zeros(n), {}, {'answer': [None] * n, 'pseudo_label': [None] * n})\n"
    ), "plain_vote.py")
    config = _load(path, "compute_score", "reward_model.vote_equivalence=math")
    assert config.method.name == "compute_score" and config.method.votes and not config.method.teacher
    assert resolve_method("compute_score") is config.method


@pytest.mark.parametrize("body, name, message", [
    ("def f(batch):\n    pass\n", "f", r"method 'f': its reward f\(batch\) cannot be called as reward\(batch, teacher=None, "
                                           r"gt_scorer=\.\.\.\).*unexpected keyword argument 'teacher'"),
    ("def f(batch, teacher=None, *, gt_scorer):\n    return RewardOutput(torch.zeros(len(batch)))\n", "f",
     r"method 'f': RewardOutput.rows\['answer'\] must hold one value per rollout \(2\); it has none"),
    ("def f(batch, teacher=None, *, gt_scorer):\n    return [0.0] * len(batch)\n", "f",
     "its reward returned list; return a corewarding.rewards.RewardOutput"),
    ("def f(batch, teacher=None, *, gt_scorer):\n    return RewardOutput(torch.zeros(3), {}, {})\n", "f",
     r"RewardOutput.scores must be a tensor of shape \[2\]"),
    ("def f(batch, teacher=None, *, gt_scorer):\n    return batch.rows['missing']\n", "f",
     "its reward raised KeyError: 'missing' on a test batch of 2 rollouts"),
    ("from corewarding.methods import Method\ndef f(batch, teacher=None, *, gt_scorer):\n    pass\n"
     "M = Method('m', f, votes=True)\n", "M", "unexpected keyword argument 'equivalence'"),
    ("from corewarding.methods import Method\ndef f(batch, teacher=None, **kw):\n    pass\n"
     "M = Method('m', f, token_stats=('perplexity',))\n", "M", r"token_stats \['perplexity'\] unknown"),
    ("def f(batch, teacher=None, *, gt_scorer):\n    pass\n", "g", r"custom_reward_function.name='g': .* has no such function "
                                                                    r"or Method \(it has \['RewardOutput', 'f'\]\)"),
    ("raise RuntimeError('boom')\n", "f", "importing it failed: RuntimeError: boom"),
    ("def f(data_source, solution_str, ground_truth, extra_info=None):\n    return 'high'\n", "f",
     r"custom_reward_function .*broken_\d+\.py:f: on a made-up rollout it returned 'high' \(str\); return a float or a "
     r"dict with a 'score'"),
    ("def f(data_source, solution_str, ground_truth, extra_info=None):\n    return {'acc': 1.0}\n", "f",
     r"on a made-up rollout it returned a dict without 'score' \(keys \['acc'\]\)"),
    ("def f(data_source, solution_str, ground_truth, extra_info=None, *, scale):\n    return 1.0\n", "f",
     r"its reward f\(batch, teacher=None, \*, gt_scorer='math_verify', metric_budget_s=.*, scale\) cannot be called .*"
     r"missing a required argument: 'scale'"),
])
def test_a_broken_contract_is_one_line_when_the_config_loads(tmp_path, body, name, message):
    path = _user_file(tmp_path, body, f"broken_{abs(hash((body, name)))}.py")
    with pytest.raises(ConfigError, match=message) as error:
        _load(path, name)
    assert "\n" not in str(error.value)


def test_reward_kwargs_are_checked_against_the_signature(tmp_path):
    path = _user_file(tmp_path, "def f(batch, teacher=None, *, gt_scorer):\n    pass\n", "kwargs.py")
    with pytest.raises(ConfigError, match="unexpected keyword argument 'temperature'"):
        _load(path, "f", "+reward_model.reward_kwargs.temperature=2")


def test_register_method_then_name_it_in_reward_manager():
    def shaped(batch, teacher=None, *, gt_scorer):
        n = len(batch)
        return __import__("corewarding.rewards", fromlist=["RewardOutput"]).RewardOutput(
            torch.ones(n), {}, {"answer": [None] * n, "pseudo_label": [None] * n})

    method = register_method(Method("always_one", shaped, aliases=("ones",)))
    try:
        config = load_config(compose_config([*CPU, "reward_model.reward_manager=ones"]), check_paths=False)
        assert config.method is method
        with pytest.raises(ConfigError, match="method name 'majority' is taken by method 'majority_voting'"):
            register_method(Method("mine", shaped, aliases=("majority",)))
        with pytest.raises(ConfigError, match="method name 'gt' is taken by method 'gt'"):
            register_method(Method("gt", shaped))
    finally:
        METHODS.pop("always_one")
        from corewarding import methods

        for alias in ("always_one", "ones"):
            methods._BY_NAME.pop(alias)


def test_a_method_record_declares_its_needs(tmp_path):
    """A record's needs reach the trainer: here the policy's per-token self-certainty, as Intuitor."""
    path = _user_file(tmp_path, (
        "from corewarding.methods import Method\nfrom corewarding.rewards import self_certainty\n"
        "M = Method('certainty_copy', self_certainty, token_stats=('self_certainty',))\n"
    ), "record.py")
    config = _load(path, "M")
    assert config.method.name == "certainty_copy" and config.method.token_stats == ("self_certainty",)


def test_a_record_can_declare_both_views_and_the_teacher(tmp_path):
    """paired + teacher (Co-rewarding-III's roles) from a user's record: accepted, the trial call gets
    a teacher batch of both views with pair_id / view, and the run's roles follow."""
    path = _user_file(tmp_path, (
        "from corewarding.methods import Method\nfrom corewarding.rewards import co_rewarding_iii\n"
        "M = Method('iii_copy', co_rewarding_iii, votes=True, paired=True, teacher=True)\n"
    ), "record.py")
    with pytest.raises(ConfigError, match="method iii_copy trains on both views of every question: it needs data.train_aug_files"):
        _load(path, "M")
    config = _load(path, "M", "data.train_aug_files=twins.parquet")
    assert config.method.name == "iii_copy"
    assert (config.roles.voters, config.roles.label_view, config.roles.policy_views) == ("teacher", "twin", "both")


# --- verl's compute_score(data_source, solution_str, ground_truth, extra_info=None) --------------------------------

RECORDING = '''
import json

CALLS = []


def compute_score(data_source, solution_str, ground_truth, extra_info=None, log_path=None, bonus=0.0):
    CALLS.append(dict(data_source=data_source, solution_str=solution_str, ground_truth=ground_truth, extra_info=extra_info))
    if log_path is not None:
        with open(log_path, "a") as log:
            log.write(json.dumps(CALLS[-1]) + "\\n")
    right = ground_truth is not None and f"\\\\boxed{{{ground_truth}}}" in solution_str
    if data_source == "plain":
        return float(right) + bonus
    return {"score": float(right) + bonus, "boxed": "\\\\boxed" in solution_str, "pred": solution_str[-3:]}
'''


def _rollouts() -> Batch:
    """Three rollouts as the trainer's reward sees them: the prompt's rows repeated, then the responses."""
    return Batch(rows={
        "prompt_messages": [[{"role": "user", "content": f"question {q}"}] for q in ("a", "a", "b")],
        "response_text": ["so \\boxed{4}", "so \\boxed{5}", "no box"], "data_source": ["arith", "arith", "plain"],
        "ground_truth": ["4", "4", "7"], "index": [10, 10, 11], "uid": ["arith/10", "arith/10", "plain/11"],
        "sample_index": [0, 1, 0],
    })


def test_verl_compute_score_is_called_once_per_rollout_with_verl_keywords(tmp_path):
    method = load_method(_user_file(tmp_path, RECORDING, "recording.py"), "compute_score")
    assert isinstance(method.reward, VerlScore) and method.ground_truth and not (method.votes or method.teacher)
    out = method.reward_fn(**method.options("math_verify", "string", {"bonus": 0.5}))(_rollouts())
    assert method.reward.fn.__globals__["CALLS"] == [
        {"data_source": "arith", "solution_str": "so \\boxed{4}", "ground_truth": "4",
         "extra_info": {"index": 10, "uid": "arith/10", "sample_index": 0}},
        {"data_source": "arith", "solution_str": "so \\boxed{5}", "ground_truth": "4",
         "extra_info": {"index": 10, "uid": "arith/10", "sample_index": 1}},
        {"data_source": "plain", "solution_str": "no box", "ground_truth": "7",
         "extra_info": {"index": 11, "uid": "plain/11", "sample_index": 0}},
    ]
    torch.testing.assert_close(out.scores, torch.tensor([1.5, 0.5, 0.5]))  # a dict's score, a float, reward_kwargs
    assert out.rows == {"answer": ["4", "5", None], "pseudo_label": [None, None, None]}
    assert out.metrics["boxed"] == 1.0  # the mean of a dict's numeric extra over the rows that returned it
    assert "pred" not in out.metrics  # not a number: not a metric
    assert (out.metrics["score_mean"], out.metrics["answer_present"], out.metrics["gt_acc"]) == (2.5 / 3, 2 / 3, 1 / 3)


def test_the_pages_short_contract_example_loads_and_scores(tmp_path):
    path = tmp_path / "boxed.py"
    path.write_text(contract_example_code())
    config = _load(path, "boxed")
    assert not isinstance(config.method.reward, VerlScore)
    out = config.method.reward_fn(gt_scorer="math_verify")(_rollouts())
    torch.testing.assert_close(out.scores, torch.tensor([1.0, 1.0, 0.0]))


def test_the_page_shows_a_verl_compute_score_that_loads_and_scores(tmp_path):
    path = tmp_path / "my_score.py"
    path.write_text(verl_example_code())
    config = _load(path, "compute_score", "+reward_model.reward_kwargs.format_bonus=0.1")
    assert config.method.name == "compute_score" and config.method.ground_truth
    out = config.method.reward_fn(**config.method.options("math_verify", "string", {"format_bonus": 0.1}))(_rollouts())
    torch.testing.assert_close(out.scores, torch.tensor([1.1, 0.1, 0.0]))
    assert out.metrics["acc"] == pytest.approx(1 / 3)


def test_a_raising_compute_score_names_its_row_source_and_file(tmp_path):
    path = _user_file(tmp_path, "def compute_score(data_source, solution_str, ground_truth, extra_info=None):\n"
                                "    return 1 / (solution_str.count('5') - 1)\n", "raising.py")
    config = _load(path, "compute_score")  # the made-up rollout has no 5: it loads
    reward = config.method.reward_fn(**config.method.options("math_verify", "string", {}))
    with pytest.raises(ComputeScoreError) as error:
        reward(_rollouts())
    assert str(error.value) == (f"custom_reward_function {path}:compute_score on row 1 (data_source='arith', index=10): "
                                "ZeroDivisionError: division by zero")


def test_a_compute_score_that_refuses_the_trial_source_still_loads(tmp_path, caplog):
    """verl's own default_compute_score raises for a data source it does not know: the made-up rollout
    of the configuration check is such a source, so its raise is a warning, not an error."""
    path = _user_file(tmp_path, "def compute_score(data_source, solution_str, ground_truth, extra_info=None):\n"
                                "    if data_source != 'arith':\n        raise NotImplementedError(data_source)\n"
                                "    return 1.0\n", "dispatch.py")
    with caplog.at_level(logging.WARNING, logger="corewarding.rewards.verl_score"):
        config = _load(path, "compute_score")
    assert "raised NotImplementedError: corewarding_trial on a made-up rollout" in caplog.text
    out = config.method.reward_fn(gt_scorer="math_verify")(_rollouts().select([0, 1]))
    torch.testing.assert_close(out.scores, torch.ones(2))


def test_reward_kwargs_are_checked_against_compute_scores_own_parameters(tmp_path):
    path = _user_file(tmp_path, RECORDING, "recording_kwargs.py")
    assert _load(path, "compute_score", "+reward_model.reward_kwargs.bonus=0.5").method.name == "compute_score"
    with pytest.raises(ConfigError, match="unexpected keyword argument 'temperature'"):
        _load(path, "compute_score", "+reward_model.reward_kwargs.temperature=2")


@pytest.mark.slow
def test_a_verl_compute_score_trains_one_cpu_step(boxing_model, tmp_path):
    """One CPU step with verl's shape: the function sees each rollout's decoded response, its prompt's
    data_source and ground truth, and extra_info.index; its dict's extra is logged under reward/."""
    from corewarding.data import write_builtin_dataset
    from corewarding.data.schema import read_verl_parquet

    data = write_builtin_dataset(tmp_path / "data", n_train=8, n_val=4, seed=0)
    log = tmp_path / "calls.jsonl"
    overrides = one_process_overrides(
        boxing_model, data, tmp_path / "ckpt", 1, 2, 2,
        f"custom_reward_function.path={_user_file(tmp_path, RECORDING, 'recording_step.py')}",
        f"+reward_model.reward_kwargs.log_path={log}")
    (step,) = run_in_process(overrides)
    calls = [call for call in map(json.loads, log.read_text().splitlines()) if call["data_source"] != "corewarding_trial"]
    assert len(calls) == 4  # 2 prompts x 2 rollouts, one call each (the configuration check's made-up one aside)
    train = read_verl_parquet(data["train"])
    truth = {(s, i): g for s, i, g in zip(train["data_source"], train["index"], train["ground_truth"])}
    questions = [m[-1]["content"] for m in train["prompt"]]
    for call in calls:
        assert truth[(call["data_source"], call["extra_info"]["index"])] == call["ground_truth"]
        assert not any(q in call["solution_str"] for q in questions)  # the response, not its prompt
    assert step["step"] == 1 and step["reward/mean"] == pytest.approx(sum(
        f"\\boxed{{{c['ground_truth']}}}" in c["solution_str"] for c in calls) / 4)
    assert 0.0 <= step["reward/boxed"] <= 1.0
