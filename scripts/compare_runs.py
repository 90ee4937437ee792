#!/usr/bin/env python
"""A markdown table across runs and benchmarks from `python -m corewarding.eval` summaries,
shaped like the paper's Table 1: rows = methods (optionally in groups, e.g. per base model and
training set), columns = benchmarks, values in %, the best of each column (within its group) in
bold, an average column.

    python scripts/compare_runs.py --runs "Before RL=outputs/eval/base" "GT-Reward=outputs/eval/gt" \\
        "Co-rewarding-II=outputs/eval/co2" --baseline "Before RL" --out figs/table1.md

A run is `NAME=PATH` or a PATH (name = its folder); PATH is a summary.json or the folder holding
one. `GROUP::NAME=PATH` puts the row under a group heading. The metric of a column is pass@1,
except AMC columns, which use avg@k as the paper does (avg@8 with --k 8 in the eval); change it
with --metric (e.g. `--metric maj@k`, or per benchmark `--metric amc=avg@k`).

The lm-evaluation-harness tasks of a summary (`corewarding.eval --lm_eval ifeval,mmlu_pro`) are
columns too, after the math benchmarks: IFEval's prompt-level strict accuracy and MMLU-Pro's
exact match by default, the first metric the harness reports for any other task, or the harness's
name for one (`--metric ifeval=inst_level_strict_acc,none`).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from corewarding.experiments.runs import parse_run_arg

PRETTY = {"math500": "MATH500", "gsm8k": "GSM8K", "amc": "AMC", "amc23": "AMC23", "aime24": "AIME24", "math": "MATH",
          "ifeval": "IFEval", "mmlu_pro": "MMLU-Pro"}
# lm-evaluation-harness task -> the metric its column shows (the harness's `metric,filter` names)
LM_EVAL_METRICS = {"ifeval": "prompt_level_strict_acc,none", "mmlu_pro": "exact_match,custom-extract"}
# The accuracy metrics `corewarding.eval` writes per benchmark (its `aggregate`); "@k" stands for the
# benchmark's own k. An explicit k (avg@8, maj@4, pass@8) is also accepted.
METRICS = ("pass@1", "avg@k", "maj@k", "pass@k", "answer_present")
EXPLICIT_K = re.compile(r"^(avg|maj|pass)@[1-9][0-9]*$")


def parse_row_arg(text: str) -> tuple[str | None, str, Path]:
    """`[GROUP::]NAME=PATH` or `[GROUP::]PATH`: (group or None, row name, summary.json)."""
    group = None
    spec = text
    if "::" in spec and not Path(spec).exists():
        group, spec = spec.split("::", 1)
    name, path = parse_run_arg(spec, "summary.json", "no such summary file (run python -m corewarding.eval first)")
    return group, name, path


def default_metric(benchmark: str) -> str:
    return "avg@k" if benchmark.lower().startswith("amc") else "pass@1"


def lm_eval_cell(row: dict[str, float], task: str, metric: str) -> tuple[float | None, str]:
    """(value in %, shown metric name) of a harness task: `metric` if the harness reports it, else
    the task's default (LM_EVAL_METRICS, or its first metric)."""
    if metric not in row:
        firsts = [k for k in row if "_stderr," not in k]
        metric = LM_EVAL_METRICS[task] if LM_EVAL_METRICS.get(task) in row else (firsts[0] if firsts else metric)
    value = row.get(metric)
    return (100.0 * float(value) if value is not None else None), metric.removesuffix(",none")


def cell_value(summary: dict[str, Any], benchmark: str, metric: str) -> tuple[float | None, str]:
    """(value in %, metric name with k filled in) of one benchmark or harness task of one summary."""
    if benchmark in summary.get("lm_eval", {}):
        return lm_eval_cell(summary["lm_eval"][benchmark], benchmark, metric)
    metrics = summary.get("benchmarks", {}).get(benchmark)
    if metrics is None:
        return None, metric
    k = metrics.get("k", summary.get("k", 1))
    name = metric.replace("@k", f"@{k}")
    value = metrics.get(name)
    return (100.0 * float(value) if value is not None else None), name


def benchmarks_of(runs: list[tuple[str | None, str, dict[str, Any]]]) -> list[str]:
    """Every benchmark any run has, in order of first appearance."""
    benchmarks: list[str] = []
    for _, _, summary in runs:
        # the harness tasks asked for (its results also hold every subtask of a group)
        asked = summary.get("lm_eval_settings", {}).get("tasks", list(summary.get("lm_eval", {})))
        for name in [*summary.get("benchmarks", {}), *asked]:
            if name not in benchmarks:
                benchmarks.append(name)
    return benchmarks


def value_rows(runs: list[tuple[str | None, str, dict[str, Any]]], benchmarks: list[str], chosen: dict[str, str],
               average: bool) -> tuple[list[list[float | None]], dict[str, str | None]]:
    """values[row][column] (the average last when asked) and each benchmark's metric name with k
    filled in from the first run that has it."""
    header_metric: dict[str, str | None] = {b: None for b in benchmarks}
    values: list[list[float | None]] = []
    for _, _, summary in runs:
        row = []
        for b in benchmarks:
            value, metric_name = cell_value(summary, b, chosen[b])
            if value is not None and header_metric[b] is None:
                header_metric[b] = metric_name
            row.append(value)
        if average:
            present = [v for v in row if v is not None]
            row.append(sum(present) / len(present) if len(present) == len(benchmarks) and present else None)
        values.append(row)
    return values, header_metric


def markdown_table(
    runs: list[tuple[str | None, str, dict[str, Any]]],
    benchmarks: list[str] | None = None,
    metrics: dict[str, str] | None = None,
    digits: int = 1,
    average: bool = True,
    baseline: str | None = None,
    bold_best: bool = True,
) -> str:
    """runs: (group or None, row name, summary dict). metrics: benchmark -> metric ("pass@1",
    "avg@k", "maj@k", "pass@k"; "*" for every benchmark)."""
    metrics = metrics or {}
    benchmarks = benchmarks_of(runs) if benchmarks is None else benchmarks
    chosen = {b: metrics.get(b, metrics.get("*", default_metric(b))) for b in benchmarks}
    values, header_metric = value_rows(runs, benchmarks, chosen, average)
    columns = [f"{PRETTY.get(b, b)} ({header_metric[b] or chosen[b]})" for b in benchmarks]
    if average:
        columns.append("Avg")

    best: dict[tuple[str | None, int], float] = {}
    for (g, _, _), row in zip(runs, values):
        for c, v in enumerate(row):
            if v is not None and (best.get((g, c)) is None or v > best[(g, c)]):
                best[(g, c)] = v
    base_rows = {g: values[i] for i, (g, name, _) in enumerate(runs) if baseline is not None and name == baseline}

    def cell(group: str | None, name: str, c: int, v: float | None) -> str:
        if v is None:
            return "–"
        text = f"{v:.{digits}f}"
        if bold_best and len(runs) > 1 and abs(v - best[(group, c)]) < 0.5 * 10**-digits:
            text = f"**{text}**"
        base = base_rows.get(group)
        if base is not None and name != baseline and base[c] is not None:
            text += f" ({v - base[c]:+.{digits}f})"
        return text

    lines = ["| Method | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    last_group: object = object()
    for (group, name, _), row in zip(runs, values):
        if group != last_group and group is not None:
            lines.append(f"| ***{group}*** |" + " |" * len(columns))
        last_group = group
        lines.append(f"| {name} | " + " | ".join(cell(group, name, c, v) for c, v in enumerate(row)) + " |")
    return "\n".join(lines)


def parse_metrics(items: list[str]) -> dict[str, str]:
    """`--metric` values (METRIC or BENCH=METRIC) -> {benchmark or "*": metric}; unknown metrics exit."""
    out = {}
    for item in items:
        if "=" in item:
            bench, metric = item.split("=", 1)
            out[bench.strip().lower()] = metric.strip()
        else:
            out["*"] = item.strip()
    for bench, metric in out.items():
        if metric not in METRICS and not EXPLICIT_K.match(metric) and not ("," in metric and bench != "*"):
            given = metric if bench == "*" else f"{bench}={metric}"
            raise SystemExit(
                f"error: --metric {given}: unknown metric {metric!r}; the eval summary has {', '.join(METRICS)} "
                "(@k is each benchmark's k; an explicit k such as avg@8 also works), or for a harness task "
                "its metric as the harness names it (ifeval=inst_level_strict_acc,none)"
            )
    return out


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="*", help="summary.json files or eval output dirs")
    parser.add_argument("--runs", nargs="+", default=[], help="[GROUP::]NAME=PATH (summary.json or its folder)")
    parser.add_argument("--benchmarks", default=None, help="comma-separated column order (default: all, first seen)")
    parser.add_argument("--metric", nargs="+", default=[], help=f"{' | '.join(METRICS)} (or with k, e.g. avg@8), or BENCH=METRIC")
    parser.add_argument("--baseline", default=None, help="row name to show differences against (e.g. 'Before RL')")
    parser.add_argument("--digits", type=int, default=1)
    parser.add_argument("--no_average", dest="average", action="store_false", help="leave out the Avg column")
    parser.add_argument("--no_bold", dest="bold", action="store_false", help="do not bold the best value per column")
    parser.add_argument("--out", default=None, help="also write the table to this file")
    args = parser.parse_args(argv)
    specs = [parse_row_arg(p) for p in args.runs + args.paths]
    if not specs:
        parser.error("give at least one summary (positional or --runs)")
    runs = [(group, name, json.loads(path.read_text())) for group, name, path in specs]
    benchmarks = [b.strip() for b in args.benchmarks.split(",")] if args.benchmarks else None
    table = markdown_table(runs, benchmarks, parse_metrics(args.metric), args.digits, args.average, args.baseline, args.bold)
    print(table)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(table + "\n")
    return table


if __name__ == "__main__":
    main()
