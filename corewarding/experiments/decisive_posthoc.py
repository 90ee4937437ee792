"""Post-hoc readings of the decisive experiment's runs, outside its protocol (figs/decisive/RESULTS.md
says so beside them): what the runs answer on the held-out questions at step 48, and how accurate
they are on each operation."""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Sequence

from corewarding.experiments.decisive_runs import LABELS, Run, by_method, label


def questions_by_op(ops: Sequence[str]) -> dict[str, list[int]]:
    """Each operation's question indices (`ops`: each question's), in the order operations appear."""
    return {op: [i for i, o in enumerate(ops) if o == op] for op in dict.fromkeys(ops)}


def most_common_answer(counts: Counter) -> tuple[str, float]:
    """The most common answer (no answer is not one) and its share of every question counted."""
    answer, count = Counter({a: k for a, k in counts.items() if a is not None}).most_common(1)[0]
    return answer, count / sum(counts.values())


def answer_table(runs: list[Run], ops: Sequence[str], example: str) -> list[str]:
    """Post-hoc: sentences naming the runs that give one answer to at least 90 % of the held-out
    questions at step 48, or of one operation's (`ops`: each question's), then each graded run's most
    common answer, how many gave `example` (the one-shot example's answer, in every prompt of the
    built-in task), and the operation where one answer has the largest share (of equal shares, the
    operation with the most questions)."""
    graded = [r for r in by_method(runs) if any(a is not None for a in r.final_answers)]
    by_op = questions_by_op(ops)
    overall = [most_common_answer(r.answer_counts()) for r in graded]
    within = [max(((op, *most_common_answer(r.answer_counts(questions))) for op, questions in by_op.items()
                   if any(r.final_answers[i] is not None for i in questions)), key=lambda t: (t[2], len(by_op[t[0]])))
              for r in graded]

    def named(shares: list[tuple], show) -> str:
        return ", ".join(f"{label(r.name)} s{r.seed} ({show(s)})" for r, s in zip(graded, shares) if s[-1] >= 0.9) or "none"

    rows = [f"Runs answering one value to at least 90 % of the questions: {named(overall, lambda s: s[0])}. "
            f"To at least 90 % of one operation's: {named(within, lambda s: f'{s[1]} on {s[0]}')}.", "",
            "| run | seed | most common answer at step 48 | its share | share answering " + example
            + " | within one operation: its most common answer (share) |", "| --- |" + " --- |" * 5]
    for r, (answer, share), (op, op_answer, op_share) in zip(graded, overall, within):
        rows.append(f"| {label(r.name)} | {r.seed} | {answer} | {share:.2f} | {r.answer_share(example):.2f} | "
                    f"{op}: {op_answer} ({op_share:.2f}) |")
    return rows


def operation_table(base: list[int], runs: list[Run], ops: Sequence[str]) -> list[str]:
    """Held-out accuracy on each operation's questions (`ops`: each question's) at steps 16 and 48,
    the mean over a method's seeds; the base model first."""
    by_op = questions_by_op(ops)

    def accuracy(correct: list[int], questions: list[int]) -> float:
        return sum(correct[i] for i in questions) / len(questions)

    lines = ["| run | seeds | " + " | ".join(f"{op} ({len(q)} questions): step 16 -> 48" for op, q in by_op.items())
             + " |", "| --- | --- |" + " --- |" * len(by_op),
             "| base model | | " + " | ".join(f"{accuracy(base, q):.3f}" for q in by_op.values()) + " |"]
    for name, name_label in LABELS.items():
        mine = [r for r in runs if r.name == name and 16 in r.heldout and 48 in r.heldout]
        if mine:
            cells = [" -> ".join(f"{statistics.fmean(accuracy(r.heldout[step], q) for r in mine):.3f}" for step in (16, 48))
                     for q in by_op.values()]
            lines.append(f"| {name_label} | {len(mine)} | " + " | ".join(cells) + " |")
    return lines
