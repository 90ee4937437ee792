"""reward_model.gt_scorer: the release's Hendrycks MATH check next to our math-verify, on hand-made
answers; each normalisation step of the benchmark's description has its case."""

from __future__ import annotations

import pytest

from corewarding.batch import Batch
from corewarding.rewards import answers as answers_mod
from corewarding.rewards import ground_truth_verifier, gt, hendrycks_equivalent, majority_voting
from corewarding.rewards.hendrycks import hendrycks_normalize


@pytest.fixture(autouse=True)
def generous_default_timeout(monkeypatch):
    monkeypatch.setattr(answers_mod, "DEFAULT_TIMEOUT", 30.0)


@pytest.mark.parametrize(
    "raw, normalised",
    [
        ("\\dfrac{1}{2}", "\\frac{1}{2}"),                       # tfrac / dfrac -> frac
        ("\\tfrac12", "\\frac{1}{2}"),                           # ... and one-character arguments braced
        ("\\frac1{72}", "\\frac{1}{72}"),
        ("\\frac{72}1", "\\frac{72}1"),                          # not covered by the description
        ("\\left( 1, 2 \\right)", "(1,2)"),                      # \left / \right and spaces dropped
        ("90^\\circ", "90"), ("90^{\\circ}", "90"),              # degrees
        ("\\$5", "5"),                                           # dollars
        ("5\\text{ cm}", "5"),                                   # a unit on the right
        ("10\\%", "10"), ("10%", "10%"),                         # only an escaped percent sign goes
        (".25", "0.25"), ("x = .25", "0.25"), ("\\frac{.5}{2}", "\\frac{0.5}{2}"), (".5", "\\frac{1}{2}"),
        ("x = 3", "3"), ("k=3", "3"), ("abc = 3", "abc=3"),      # a short left side of one "=" goes
        ("\\sqrt3", "\\sqrt{3}"), ("2\\sqrt{3}", "2\\sqrt{3}"),
        ("0.5", "\\frac{1}{2}"), ("0.50", "0.50"),               # the literal 0.5 only
        ("1/2", "\\frac{1}{2}"), ("-3/4", "\\frac{-3}{4}"),      # a/b of plain integers
        ("03/4", "03/4"), ("x/2", "x/2"), ("1/2/3", "1/2/3"),
        ("a\\\\b", "a\\b"), ("1\\!000", "1000"), ("1\n2", "12"),
        ("", ""),
    ],
)
def test_normalisation_steps(raw, normalised):
    assert hendrycks_normalize(raw) == normalised


@pytest.mark.parametrize(
    "answer, truth, release, ours",
    [
        ("142", "142.0", False, True),          # AMC's float ground truths: never matched by the release
        ("2,1", "1,2", False, True),            # math-verify compares lists as sets
        ("0.50", "\\frac12", False, True),
        ("x = 3", "3", True, True),
        ("\\dfrac{1}{2}", "0.5", True, True),
        ("1/2", "\\frac{1}{2}", True, True),
        ("5\\text{ cm}", "5", True, True),
        ("\\text{ a}\\text{ b}", "\\text{ a}\\text{ b}", True, True),  # two units: raw strings compared
        ("5\\text{ m}\\text{ s}", "5", False, True),  # ... so two units never match a bare value
        ("\\sqrt", "\\sqrt", True, True),       # nothing after \sqrt: raw strings compared
        ("7", "8", False, False),
        (None, "3", False, False),
    ],
)
def test_release_check_against_ours(answer, truth, release, ours):
    assert hendrycks_equivalent(answer, truth) is release
    assert ground_truth_verifier("hendrycks", None).equivalent(answer, truth) is release
    assert ground_truth_verifier("math_verify", None).equivalent(answer, truth) is ours


def resp(answer: str) -> str:
    return f"so the answer is \\boxed{{{answer}}}."


def test_gt_reward_and_metrics_follow_the_scorer():
    batch = Batch(rows={"response_text": [resp(a) for a in ["142", "0.5", "2,1", "\\dfrac{1}{2}"]],
                        "uid": ["a", "b", "c", "d"], "ground_truth": ["142.0", "\\frac12", "1,2", "0.5"]})
    assert gt(batch).scores.tolist() == [1.0, 1.0, 1.0, 1.0]
    release = gt(batch, gt_scorer="hendrycks")
    assert release.scores.tolist() == [0.0, 1.0, 0.0, 1.0] and release.metrics["gt_acc"] == 0.5
    voted = Batch(rows={"response_text": [resp("142")] * 2, "uid": ["u", "u"], "sample_index": [0, 1],
                        "ground_truth": ["142.0"] * 2})
    assert majority_voting(voted).metrics["pseudo_label_acc"] == 1.0
    label_metrics = majority_voting(voted, gt_scorer="hendrycks").metrics
    assert label_metrics["pseudo_label_acc"] == 0.0 and label_metrics["gt_acc"] == 0.0


def test_unknown_scorer():
    with pytest.raises(ValueError, match="reward_model.gt_scorer='exact'"):
        ground_truth_verifier("exact", None)
