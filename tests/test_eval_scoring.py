"""Eval scoring by hand-made responses with known correctness: grading, pass@k / maj@k / answer
metrics, the hendrycks ground-truth scorer, and benchmark names resolved to their files."""

from __future__ import annotations

from pathlib import Path

import pytest

from corewarding.eval import EvalError, benchmarks, cli, scoring
from eval_cases import HAND, HAND_METRICS


def test_grade_response() -> None:
    assert scoring.grade_response("Thus \\boxed{\\dfrac12}", "0.5").correct
    assert scoring.grade_response("\\boxed{1} then \\boxed{2}", "2").answer == "2"  # the last box
    missing = scoring.grade_response("no answer", "2")
    assert missing.answer is None and not missing.correct
    empty = scoring.grade_response("\\boxed{}", "2")
    assert empty.answer is None and not empty.correct


def test_score_samples_by_hand() -> None:
    metrics, graded, scores = scoring.score_samples([r for _, r, _ in HAND], [gt for gt, _, _ in HAND])
    for group, (_, _, flags) in zip(graded, HAND):
        assert [int(g.correct) for g in group] == flags
    for key, value in HAND_METRICS.items():
        assert metrics[key] == pytest.approx(value), key
    assert metrics["n_questions"] == 4 and metrics["k"] == 4
    assert [s.majority_answer for s in scores] == ["42", "3", "8", "\\sqrt{2}"]
    assert [s.majority_correct for s in scores] == [True, False, False, True]
    assert scores[0].majority_ratio == pytest.approx(0.5)


def test_gt_scorer_hendrycks_is_the_release_string_check() -> None:
    """--gt_scorer hendrycks (the training's reward_model.gt_scorer): MATH's strip_string, under
    which "42.0" is not "42" (math-verify: equal) while its 0.5 -> \\frac{1}{2} rule still holds:
    question 1 scores 1/4 instead of 2/4, so pass@1 = (1/4 + 1/4 + 0 + 1) / 4."""
    metrics, graded, _ = scoring.score_samples([r for _, r, _ in HAND], [gt for gt, _, _ in HAND], "hendrycks")
    assert [int(g.correct) for g in graded[0]] == [1, 0, 0, 0]
    assert [int(g.correct) for g in graded[1]] == [1, 0, 0, 0]
    assert metrics["pass@1"] == pytest.approx(0.375) and metrics["maj@4"] == 0.5
    assert cli.build_parser().parse_args(["--model", "m", "--gt_scorer", "hendrycks"]).gt_scorer == "hendrycks"
    assert cli.build_parser().parse_args(["--model", "m"]).gt_scorer == "math_verify"
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["--model", "m", "--gt_scorer", "exact"])


def test_majority_uses_math_equivalence() -> None:
    # 1/2 written three ways is one class of 3 against two 7s: the majority is right.
    score = scoring.score_question(["\\frac12", "0.5", "7", "1/2", "7"], [True, True, False, True, False], "\\frac{1}{2}")
    assert score.majority_correct and score.majority_ratio == pytest.approx(0.6)
    assert score.n_correct == 3 and score.n_present == 5
    # pass@1 low but majority right; pass@1 nonzero but majority wrong
    low = scoring.aggregate([scoring.score_question(["5", "5", "6", None], [True, True, False, False], "5")])
    assert low["pass@1"] == 0.5 and low["maj@4"] == 1.0 and low["answer_present"] == 0.75
    nobody = scoring.score_question([None, None], [False, False], "5")
    assert nobody.majority_answer is None and not nobody.majority_correct and nobody.majority_ratio == 0.0


def test_aggregate_needs_one_k() -> None:
    scores = [scoring.score_question(["1"], [True], "1"), scoring.score_question(["1", "2"], [True, False], "1")]
    with pytest.raises(ValueError, match=r"different sample counts \[1, 2\]"):
        scoring.aggregate(scores)


def test_k1_metrics() -> None:
    metrics, _, _ = scoring.score_samples([["\\boxed{1}"], ["\\boxed{3}"]], ["1", "2"])
    assert metrics["pass@1"] == metrics["avg@1"] == metrics["maj@1"] == 0.5


def test_resolve_benchmark(tmp_path: Path) -> None:
    from corewarding.data.schema import make_row, write_verl_parquet

    path = write_verl_parquet([make_row("1+1?", "2", 0, "test", "x")], tmp_path / "eval" / "gsm8k.parquet")
    assert benchmarks.resolve_benchmark("gsm8k", tmp_path) == ("gsm8k", path)
    assert benchmarks.resolve_benchmark("GSM8K", tmp_path) == ("gsm8k", path)
    assert benchmarks.resolve_benchmark(str(path), "elsewhere") == ("gsm8k", path)
    with pytest.raises(EvalError, match="preprocess"):
        benchmarks.resolve_benchmark("math500", tmp_path)
    with pytest.raises(EvalError, match="unknown benchmark"):
        benchmarks.resolve_benchmark("mmlu", tmp_path)
    with pytest.raises(EvalError, match="not found"):
        benchmarks.resolve_benchmark(str(tmp_path / "x.parquet"), tmp_path)


def test_the_default_benchmarks_are_the_papers() -> None:
    """Without --benchmarks: MATH500 and GSM8K one sample each, AMC eight (the paper's avg@8)."""
    args = cli.build_parser().parse_args(["--model", "m"])
    specs = [benchmarks.parse_benchmark_spec(s, args.k) for s in args.benchmarks.split(",")]
    assert specs == [("math500", 1), ("gsm8k", 1), ("amc", 8)]
