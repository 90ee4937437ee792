"""Training curves from metrics.jsonl fixtures and the Table-1-shaped markdown comparison."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from corewarding.experiments import curves
from corewarding.trainer.tracking import read_metrics

REPO = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


plot_curves = _script("plot_curves")
compare_runs = _script("compare_runs")


def _write_log(path: Path, collapse: bool, with_val: bool = True) -> Path:
    """A metrics.jsonl as the trainer writes it ({"step": N, key: value}); validation every 5 steps;
    `collapse` mimics a self-rewarding baseline whose accuracy rises then falls."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for step in range(1, 41):
        entry = {
            "step": step,
            "reward/mean": 0.2 + 0.015 * step,
            "reward/pseudo_label_acc": 0.3 + (0.01 * step if not collapse else 0.3 * math.sin(step / 13)),
            "actor/entropy": 1.5 * math.exp(-step / (10 if collapse else 40)),
            "response_length/mean": 300 + 5 * step,
            "timing/step": 12.0,
            "note": "text values are ignored",
        }
        if with_val and step % 5 == 0:
            entry["val/acc"] = 0.3 + (0.01 * step if not collapse else 0.2 * math.sin(step / 13))
        lines.append(json.dumps(entry))
    lines.append('{"step": 41, "reward/mean": 0.9')  # a run still writing: truncated last line
    path.write_text("\n".join(lines) + "\n")
    return path


def test_series_picks_keys_and_steps(tmp_path: Path) -> None:
    log = _write_log(tmp_path / "a" / "metrics.jsonl", collapse=False)
    entries = read_metrics(log, skip_bad_lines=True)
    assert len(entries) == 40
    val = curves.series(entries, dict(curves.PANELS)["validation accuracy"])
    assert list(val) == ["val/acc"]
    steps, values = val["val/acc"]
    assert steps == [5, 10, 15, 20, 25, 30, 35, 40] and values[0] == pytest.approx(0.35)
    # per-source validation keys when there is no overall one; a NaN logged as a string is skipped
    entries = [{"step": 1, "val/math500/acc": 0.1, "val/gsm8k/acc": "nan"}, {"step": 2, "val/math500/acc": 0.2, "val/gsm8k/acc": 0.4}]
    found = curves.series(entries, dict(curves.PANELS)["validation accuracy"])
    assert found == {"val/math500/acc": ([1, 2], [0.1, 0.2]), "val/gsm8k/acc": ([2], [0.4])}


def test_validation_standard_error_is_drawn_as_a_band(tmp_path: Path, monkeypatch) -> None:
    from matplotlib.axes import Axes

    bands = []
    monkeypatch.setattr(Axes, "fill_between", lambda self, x, low, high, **kw: bands.append((list(x), low, high)))
    entries = [{"step": 0, "val/acc": 0.1, "val/acc_se": 0.02}, {"step": 4, "val/acc": 0.3, "val/acc_se": 0.05}]
    curves.plot_curves([("run", entries)], tmp_path / "curves.png")
    assert len(bands) == 1
    steps, low, high = bands[0]
    assert steps == [0, 4] and low == pytest.approx([0.08, 0.25]) and high == pytest.approx([0.12, 0.35])


def test_plot_png_from_fixture_logs(tmp_path: Path) -> None:
    co = _write_log(tmp_path / "co2" / "metrics.jsonl", collapse=False)
    maj = _write_log(tmp_path / "maj" / "metrics.jsonl", collapse=True, with_val=False)
    out = tmp_path / "figs" / "curves.png"
    result = subprocess.run(
        [sys.executable, "scripts/plot_curves.py", "--runs", f"Co-rewarding-II={co}", f"Majority-Voting={maj.parent}",
         "--out", str(out), "--title", "fixture"],
        capture_output=True, text=True, cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    assert out.is_file() and out.stat().st_size > 20_000
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image  # matplotlib depends on pillow

    width, height = Image.open(out).size
    assert width > 1000 and height > 600  # 3 x 2 panels


def test_plot_positional_paths_and_no_metrics(tmp_path: Path) -> None:
    log = _write_log(tmp_path / "runA" / "metrics.jsonl", collapse=False)
    out = plot_curves.main([str(log), "--out", str(tmp_path / "one.png"), "--smooth", "0.6"])
    assert out.stat().st_size > 10_000
    empty = tmp_path / "empty" / "metrics.jsonl"
    empty.parent.mkdir()
    empty.write_text('{"step": 1, "timing/step": 3.0}\n')
    with pytest.raises(SystemExit, match="none of the runs"):
        plot_curves.main([str(empty), "--out", str(tmp_path / "none.png")])


def _summary(path: Path, values: dict[str, tuple[int, float]]) -> Path:
    """A summary.json as corewarding.eval writes it: benchmark -> (k, pass@1)."""
    benchmarks = {}
    for name, (k, acc) in values.items():
        benchmarks[name] = {"n_questions": 10, "k": k, f"maj@{k}": min(1.0, acc + 0.05), f"pass@{k}": min(1.0, acc + 0.1),
                            "answer_present": 0.9}
        benchmarks[name].update({"pass@1": acc, f"avg@{k}": acc})  # with k = 1, pass@k is pass@1
    path.mkdir(parents=True, exist_ok=True)
    (path / "summary.json").write_text(json.dumps({"k": 1, "benchmarks": benchmarks}))
    return path


def test_compare_runs_table(tmp_path: Path) -> None:
    base = _summary(tmp_path / "base", {"math500": (1, 0.724), "gsm8k": (1, 0.2782), "amc": (8, 0.30)})
    gt = _summary(tmp_path / "gt", {"math500": (1, 0.826), "gsm8k": (1, 0.8726), "amc": (8, 0.45)})
    co = _summary(tmp_path / "co1", {"math500": (1, 0.812), "gsm8k": (1, 0.9370), "amc": (8, 0.41)})
    out = tmp_path / "table.md"
    table = compare_runs.main(["--runs", f"Before RL={base}", f"GT-Reward={gt / 'summary.json'}", f"Co-rewarding-I={co}",
                               "--baseline", "Before RL", "--out", str(out)])
    assert out.read_text().strip() == table
    lines = table.splitlines()
    assert lines[0] == "| Method | MATH500 (pass@1) | GSM8K (pass@1) | AMC (avg@8) | Avg |"
    assert lines[1] == "|---|---:|---:|---:|---:|"
    assert lines[2] == "| Before RL | 72.4 | 27.8 | 30.0 | 43.4 |"
    assert lines[3] == "| GT-Reward | **82.6** (+10.2) | 87.3 (+59.4) | **45.0** (+15.0) | 71.6 (+28.2) |"
    assert lines[4] == "| Co-rewarding-I | 81.2 (+8.8) | **93.7** (+65.9) | 41.0 (+11.0) | **72.0** (+28.6) |"


def test_compare_runs_groups_metrics_and_missing(tmp_path: Path) -> None:
    a = _summary(tmp_path / "a", {"math500": (4, 0.5), "gsm8k": (4, 0.25)})
    b = _summary(tmp_path / "b", {"math500": (4, 0.75)})
    runs = [("Qwen3-1.7B, MATH", "A", json.loads((a / "summary.json").read_text())),
            ("Qwen3-1.7B, MATH", "B", json.loads((b / "summary.json").read_text()))]
    table = compare_runs.markdown_table(runs, metrics=compare_runs.parse_metrics(["maj@k"]), digits=2)
    lines = table.splitlines()
    assert lines[0] == "| Method | MATH500 (maj@4) | GSM8K (maj@4) | Avg |"
    assert lines[2] == "| ***Qwen3-1.7B, MATH*** | | | |"
    assert lines[3] == "| A | 55.00 | **30.00** | **42.50** |"
    assert lines[4] == "| B | **80.00** | – | – |"
    per_bench = compare_runs.markdown_table(runs[:1], benchmarks=["gsm8k"], metrics={"gsm8k": "pass@k"}, average=False)
    assert per_bench.splitlines()[3] == "| A | 35.0 |"  # a single row: nothing to bold


def test_compare_runs_metrics_are_what_eval_writes() -> None:
    from corewarding.eval.scoring import aggregate, score_question

    written = set(aggregate([score_question(["1", "2", "1"], [True, False, True], "1")]))
    assert {m.replace("@k", "@3") for m in compare_runs.METRICS} == written - {"n_questions", "k"}
    assert compare_runs.parse_metrics(["maj@k", "amc=avg@8", "gsm8k=answer_present"]) == {
        "*": "maj@k", "amc": "avg@8", "gsm8k": "answer_present"}
    for bad, shown in (("acc@1", "--metric acc@1:"), ("amc=avg@", "--metric amc=avg@:"), ("pass@0", "--metric pass@0:"),
                       ("mean_response_tokens", "--metric mean_response_tokens:")):
        with pytest.raises(SystemExit, match="unknown metric") as error:
            compare_runs.parse_metrics([bad])
        assert shown in str(error.value) and "pass@1, avg@k, maj@k, pass@k, answer_present" in str(error.value)


def test_reward_panel_is_each_runs_own_scale_and_seeds_follow_their_mean():
    """Rewards of different scales (Self-Certainty ~40, a vote in [0, 1]) are drawn over each run's
    largest |value|; the thin lines of a run's seeds are scaled like its mean."""
    plot = curves
    runs = [("SC", [{"step": 1, "reward/mean": 20.0}, {"step": 2, "reward/mean": 40.0}]),
            ("MV", [{"step": 1, "reward/mean": 0.25}, {"step": 2, "reward/mean": 0.5}])]
    thin = {"MV": [[{"step": 1, "reward/mean": 0.5}, {"step": 2, "reward/mean": 0.25}]]}
    panels = dict(plot.collect_panels(runs, thin))
    lines = {label: (values, extra) for label, _, values, _, extra in panels[plot.NORMALISED]}
    assert lines["SC"] == ([0.5, 1.0], []) and lines["MV"][0] == [0.5, 1.0]
    assert lines["MV"][1] == [([1, 2], [1.0, 0.5])]  # the seed, over the mean's largest value (0.5)
