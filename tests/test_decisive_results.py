"""scripts/decisive_results.py: the protocol's statistics and readings on made-up records whose
answers are known by construction."""

from __future__ import annotations

import gzip
import json
import math
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

import decisive_results as dr  # noqa: E402

from corewarding.experiments.decisive_posthoc import answer_table, operation_table  # noqa: E402

N = 100  # held-out questions of the made-up records
OPS = ["+"] * (N // 2) + ["-"] * (N // 2)  # their operations


def _heldout(path: Path, correct: list[int], wrong: str | None = None) -> None:
    """Question i answered `i` when right, else `wrong` (None: a wrong answer of its own, `-i`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt") as handle:
        for i in reversed(range(len(correct))):  # out of order: the reader sorts by index
            answer = str(i) if correct[i] else (wrong or str(-i))
            handle.write(json.dumps({"index": i, "correct": bool(correct[i]), "extracted_answer": answer}) + "\n")


def _first(k: int) -> list[int]:
    return [1] * k + [0] * (N - k)


def _run(root: Path, seed: int, name: str, right: dict[int, int], majority: float, truncated: float,
         wrong: str | None = None) -> None:
    folder = root / f"seed{seed}" / name
    for step, k in right.items():
        _heldout(folder / "heldout" / f"{step}.jsonl.gz", _first(k), wrong)
    rows = [{"step": s, "monitor/majority_ratio": majority if s >= 45 else 0.3,
             "response_length/clip_ratio": truncated if s >= 45 else 0.0} for s in range(1, 49)]
    val = {0: 10, **right}  # the 64-question validation the monitor reads, here as the held-out set
    rows = [{"step": 0, "val/acc": val[0] / N}] + [r | ({"val/acc": val[r["step"]] / N} if r["step"] in val else {})
                                                   for r in rows]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "decisive_done.json").write_text(json.dumps({"train_seconds": 1800.0, "eval_seconds": {"16": 60.0}}))


@pytest.fixture
def records(tmp_path):
    _heldout(tmp_path / "base" / "heldout" / "0.jsonl.gz", _first(10))
    # seed 0: MV collapses (10 -> 30 -> 2 right, confident); CR-II holds (30 -> 35)
    _run(tmp_path, 0, "majority_voting", {16: 30, 32: 20, 48: 2}, majority=0.95, truncated=0.0, wrong="68")
    _run(tmp_path, 0, "co_rewarding_ii", {16: 30, 32: 32, 48: 35}, majority=0.8, truncated=0.0)
    # seed 1: MV falls by truncation (25 -> 5, clipped); CR-II holds (25 -> 26)
    _run(tmp_path, 1, "majority_voting", {16: 25, 32: 15, 48: 5}, majority=0.95, truncated=0.7)
    _run(tmp_path, 1, "co_rewarding_ii", {16: 25, 32: 26, 48: 26}, majority=0.85, truncated=0.0)
    (tmp_path / "set.jsonl").write_text("".join(json.dumps({"op": op}) + "\n" for op in OPS))
    return tmp_path


def test_the_primary_difference_is_paired_by_question_within_each_seed(records):
    base, runs = dr.read_runs(records)
    assert sum(base) == 10 and {(r.name, r.seed) for r in runs} == {(m, s) for m in dr.PRIMARY for s in (0, 1)}
    assert dr.paired_differences(runs, "co_rewarding_ii", "majority_voting", 48) == {0: 0.33, 1: 0.21}
    assert next(r for r in runs if r.seed == 0 and r.name == "majority_voting").heldout[0] == _first(10)


def test_each_run_is_read_as_the_protocol_defines(records):
    base, runs = dr.read_runs(records)
    readings = {(r.name, r.seed): dr.status(r, sum(base) / N) for r in runs}
    assert readings == {("majority_voting", 0): "collapsed", ("majority_voting", 1): "truncation",
                        ("co_rewarding_ii", 0): "held", ("co_rewarding_ii", 1): "held"}
    early = next(r for r in runs if (r.name, r.seed) == ("majority_voting", 0))
    early.heldout[16] = _first(1)  # collapsed before step 16: measured against the base model (0.10)
    assert dr.status(early, 0.10) == "collapsed"
    early.history = [{**h, "monitor/majority_ratio": 0.5} for h in early.history]
    assert dr.status(early, 0.10) == "fell"  # fell, but not confidently: neither sign


def test_the_truncation_note_names_the_runs_cut_at_the_cap_but_answered(records):
    _, runs = dr.read_runs(records)
    for r in runs:  # MV s1 is cut and unanswered (degenerate); CR-II s1 cut but answered; the rest not cut
        cut = (r.name, r.seed) in {("majority_voting", 1), ("co_rewarding_ii", 1)}
        r.history = [{**h, "response_length/clip_ratio": 1.0 if cut and h["step"] >= 45 else 0.0,
                      "reward/answer_present": 0.0 if r.name == "majority_voting" and cut else 1.0} for h in r.history]
    note = dr.truncation_note(runs)
    assert note.endswith("(mostly so in Co-rewarding-II s1: cut but answered, not a degenerate run).")
    assert "Majority-Voting" not in note
    table = dr.collapse_table(runs, 0.10, {id(r): {} for r in runs})
    assert "| answered 45-48 |" in table[0]
    assert table[2].split(" | ")[6:8] == ["0.00", "1.00"]  # MV s0: not cut, answered


def test_the_64_question_table_shows_each_seed_and_their_mean(records):
    """The replication's 64-question avg@4 (`val/acc`) at steps 0, 8, ..., 48: a row per method with
    the mean ± s.e. over seeds, then a row per seed; a step not validated reads '-'."""
    _, runs = dr.read_runs(records)
    for r in runs:
        r.history = [{"step": step, "val/acc": 0.1 * r.seed + step / 100} for step in range(0, 41, 8)]
    table = dr.validation_table(runs)
    assert table[0] == "| run | seeds | step 0 | step 8 | step 16 | step 24 | step 32 | step 40 | step 48 |"
    rows = [[cell.strip() for cell in row.strip("|").split("|")] for row in table]
    mv = next(i for i, row in enumerate(rows) if row[0] == "Majority-Voting")
    se = 0.1 / math.sqrt(2) / math.sqrt(2)  # two seeds 0.1 apart: sample sd 0.1 / sqrt(2)
    assert rows[mv][1] == "2" and rows[mv][3] == f"0.130 ± {se:.3f}"  # step 8: seeds 0.08 and 0.18
    assert rows[mv + 1] == ["s0", "", "0.000", "0.080", "0.160", "0.240", "0.320", "0.400", "-"]


def test_t_summary_and_fisher_against_their_formulas():
    stat = dr.t_summary([0.1, 0.2, 0.3])
    se = math.sqrt(0.01 / 3)  # sample variance 0.01
    assert stat["mean"] == pytest.approx(0.2, rel=1e-12) and stat["se"] == pytest.approx(se, rel=1e-12)
    assert stat["t"] == pytest.approx(0.2 / se, rel=1e-12) and stat["df"] == 2
    # two-sided p of t = 2 * sqrt(3) with 2 degrees of freedom: 1 - t / sqrt(2 + t^2)
    t = 0.2 / se
    assert stat["p"] == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-9)
    assert stat["hi90"] - stat["mean"] == pytest.approx(2.919986 * se, rel=1e-6)  # t(0.95, 2)
    # 4 of 8 against 0 of 8: the hypergeometric tail C(8,4) C(8,0) / C(16,4)
    assert dr.fisher_greater(4, 8, 0, 8) == pytest.approx(70 / 1820, rel=1e-9)
    assert ", p = 0.074;" in dr._fmt(stat)
    assert ", p < 0.001;" in dr._fmt(dr.t_summary([0.10, 0.11, 0.12, 0.105, 0.115]))


@pytest.mark.parametrize("mean, t, hi90, mv, cr, expected", [
    (0.05, 2.5, 0.09, 0, 0, "supported"),  # large and significant
    (0.05, 2.0, 0.09, 0, 0, "inconclusive"),  # large, not significant at 8 seeds (2.365)
    (0.01, 0.5, 0.02, 4, 0, "supported"),  # half of MV collapses, CR-II none
    (0.00, 0.0, 0.02, 1, 0, "refuted"),  # no difference and MV holds
    (0.00, 0.0, 0.02, 5, 5, "refuted"),  # both give it back alike
    (0.00, 0.0, 0.02, 3, 1, "inconclusive"),
    (0.02, 1.0, 0.05, 0, 0, "inconclusive"),  # the interval still reaches +0.03
])
def test_the_verdict_rules(mean, t, hi90, mv, cr, expected):
    primary = {"mean": mean, "t": t, "hi90": hi90}
    word, reason = dr.verdict(primary, {"majority_voting": mv, "co_rewarding_ii": cr}, seeds=8)
    assert word == expected, reason


def test_the_report_gives_no_verdict_before_eight_seeds(records, tmp_path):
    text = dr.main(["--root", str(records), "--set", str(records / "set.jsonl"), "--out", str(tmp_path)])
    assert "None yet: 2 of the protocol's 8 primary seed pairs" in text
    assert "D = +0.270 ± 0.060" in text and "s0: +0.330, s1: +0.210" in text
    assert "Majority-Voting 1, Co-rewarding-II 0" in text
    assert "Readings: Majority-Voting: collapsed 1, truncation 1; Co-rewarding-II: held 2." in text
    assert "flags a collapse or a degenerate run exactly where the protocol reads one." in text


def test_the_report_names_the_runs_where_the_monitor_disagrees(records, tmp_path):
    """Seed 0's Majority-Voting without its validations: the monitor gives no verdict where the
    protocol reads a collapse, and the report says so."""
    metrics = records / "seed0" / "majority_voting" / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    metrics.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "val/acc"}) + "\n" for r in rows))
    text = dr.main(["--root", str(records), "--set", str(records / "set.jsonl"), "--out", str(tmp_path)])
    assert "disagrees with the protocol's reading on Majority-Voting s0." in text
    assert (tmp_path / "decisive.png").stat().st_size > 10_000 and (tmp_path / "RESULTS.md").read_text() == text


def test_the_post_hoc_table_names_the_runs_that_gather_on_one_answer(records):
    """MV s0 answers the one-shot example's 68 to its 98 wrong questions: named, 0.98 of both columns,
    all of the subtractions; CR-II s1 answers 1 to every subtraction (half the questions): named for
    that operation only; the others answer each question differently."""
    with gzip.open(records / "seed1" / "co_rewarding_ii" / "heldout" / "48.jsonl.gz", "wt") as handle:
        handle.writelines(json.dumps({"index": i, "correct": i < 26, "extracted_answer": str(i + 100) if OPS[i] == "+" else "1"})
                          + "\n" for i in range(N))
    _, runs = dr.read_runs(records)
    lines = answer_table(runs, OPS, "68")
    assert lines[0] == ("Runs answering one value to at least 90 % of the questions: Majority-Voting s0 (68). To at "
                        "least 90 % of one operation's: Majority-Voting s0 (68 on -), Co-rewarding-II s1 (1 on -).")
    assert "| Majority-Voting | 0 | 68 | 0.98 | 0.98 | -: 68 (1.00) |" in lines
    assert "| Co-rewarding-II | 1 | 1 | 0.50 | 0.00 | -: 1 (1.00) |" in lines
    other = next(line for line in lines if line.startswith("| Co-rewarding-II | 0 |"))
    assert other.endswith("| 0.01 | 0.00 | +: 0 (0.02) |")  # every answer once (which is "most common" is a tie)
    assert "## Post-hoc, outside the protocol" in dr.report(*dr.read_runs(records), OPS)


def test_the_operation_table_splits_accuracy_by_each_questions_operation(records):
    """The made-up runs are right on the first k questions: all additions (the first half) while k <= 50."""
    base, runs = dr.read_runs(records)
    lines = operation_table(base, runs, OPS)
    assert lines[0] == "| run | seeds | + (50 questions): step 16 -> 48 | - (50 questions): step 16 -> 48 |"
    assert lines[2] == "| base model | | 0.200 | 0.000 |"
    assert "| Majority-Voting | 2 | 0.550 -> 0.070 | 0.000 -> 0.000 |" in lines
    assert "| Co-rewarding-II | 2 | 0.550 -> 0.610 | 0.000 -> 0.000 |" in lines


def test_a_run_without_step_48_or_with_unanswered_questions_is_read(records):
    """A run stopped before its last grading reads as unfinished and stays out of the answers table;
    questions without an answer are not one shared answer."""
    (records / "seed1" / "majority_voting" / "heldout" / "48.jsonl.gz").unlink()
    with gzip.open(records / "seed1" / "co_rewarding_ii" / "heldout" / "48.jsonl.gz", "wt") as handle:
        handle.writelines(json.dumps({"index": i, "correct": False, "extracted_answer": None}) + "\n" for i in range(N))
    base, runs = dr.read_runs(records)
    stopped = next(r for r in runs if (r.name, r.seed) == ("majority_voting", 1))
    assert dr.status(stopped, sum(base) / N) == "unfinished"
    lines = answer_table(runs, OPS, "68")
    assert lines[0].startswith("Runs answering one value to at least 90 % of the questions: Majority-Voting s0 (68).")
    assert not any(line.startswith(("| Majority-Voting | 1 |", "| Co-rewarding-II | 1 |")) for line in lines)


def test_the_exploratory_runs_sit_under_their_protocol_twin_with_the_step_one_check(records, tmp_path):
    """An exploratory run is reported beside the protocol's run of its method and seed, never in the
    verdict's numbers; the policy's own step-1 metrics are compared with the twin's, the rest not."""
    explored = tmp_path / "exploratory"
    _heldout(explored / "base" / "heldout" / "0.jsonl.gz", _first(10))
    _run(explored, 0, "co_rewarding_ii-release_ema", {16: 30, 32: 10, 48: 1}, majority=0.95, truncated=0.0, wrong="68")
    _run(explored, 1, "co_rewarding_ii-release_ema", {16: 25, 32: 26, 48: 27}, majority=0.8, truncated=0.0)
    def change_step_one(metrics: Path, **values: float) -> None:
        rows = [json.loads(line) for line in metrics.read_text().splitlines()]
        rows[1] |= {key.replace("__", "/"): value for key, value in values.items()}
        metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))

    for seed in (0, 1):  # the teacher's labels differ, so do the rewards: not the policy's own metrics
        change_step_one(records / f"seed{seed}" / "co_rewarding_ii" / "metrics.jsonl", reward__mean=0.1, timing__step=9.0)
        change_step_one(explored / f"seed{seed}" / "co_rewarding_ii-release_ema" / "metrics.jsonl", reward__mean=0.5,
                        timing__step=5.0)
    change_step_one(explored / "seed1" / "co_rewarding_ii-release_ema" / "metrics.jsonl", monitor__majority_ratio=0.33)
    base, runs = dr.read_runs(records)
    text = dr.main(["--root", str(records), "--set", str(records / "set.jsonl"), "--exploratory", str(explored),
                    "--out", str(tmp_path)])
    assert text.split("## Exploratory")[0].rstrip() == dr.report(base, runs, OPS).rstrip()  # the protocol's part unchanged
    section = text.split("## Exploratory")[1].splitlines()
    rows = [line for line in section if line.startswith("| Co-rewarding-II")]
    assert rows[0] == ("| Co-rewarding-II (release_ema) | 0 | 0.300 | 0.100 | 0.010 | collapsed | 0.99 "
                       "| equal (2 metrics) |")
    assert rows[1] == "| Co-rewarding-II | 0 | 0.300 | 0.320 | 0.350 | held | 0.00 | - |"
    assert rows[2].endswith("| held | 0.00 | differs in 1 of 2 metrics (largest: monitor/majority_ratio, relative 1.0e-01) |")


def test_records_of_another_set_are_refused_by_name(records, tmp_path):
    """A held-out set of another size than the records' (the set file, or one run's grading) is an
    error that names what to pass or the run's folder, not an index error or wrong per-operation numbers."""
    with pytest.raises(SystemExit, match=r"set.jsonl has 100 questions, the records 101: pass the set"):
        dr.read_ops(records / "set.jsonl", N + 1)
    _heldout(records / "seed1" / "co_rewarding_ii" / "heldout" / "32.jsonl.gz", _first(20)[:90])
    with pytest.raises(SystemExit, match=r"seed1/co_rewarding_ii: graded on \[90, 100\] held-out questions"):
        dr.read_runs(records)


def test_an_exploratory_run_without_its_protocol_twin_is_listed_alone(records, tmp_path):
    explored = tmp_path / "exploratory"
    _heldout(explored / "base" / "heldout" / "0.jsonl.gz", _first(10))
    _run(explored, 5, "co_rewarding_ii-release_ema", {16: 30, 32: 31, 48: 32}, majority=0.8, truncated=0.0)
    base, runs = dr.read_runs(records)
    section = dr.exploratory_section(runs, dr.read_runs(explored)[1], sum(base) / N)
    assert section[-1] == "| Co-rewarding-II (release_ema) | 5 | 0.300 | 0.310 | 0.320 | held | 0.00 | no protocol run |"
