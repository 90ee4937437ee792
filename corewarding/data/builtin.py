"""The built-in offline dataset: easy generated arithmetic and word problems with real rephrased twins.

Each problem is a few numbers and an operation. It is rendered through one of several surface
templates for the original file and through a *different* template (other wording, other names
and objects for word problems) for the rewrite file, so every question has a genuine rephrased
twin with the same answer and the same `extra_info.index`. Everything is deterministic by seed.

The demo model (SmolLM2-135M-Instruct) only boxes its answers with a one-shot system prompt, so
the built-in files use `ONE_SHOT_SYSTEM_PROMPT` by default (pass `system_prompt=SYSTEM_PROMPT`
for the paper's prompt).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

from corewarding.data.schema import make_row, write_verl_parquet

# No placeholder answer in the instruction: a model that copies one ("\\boxed{N}") gives every voting
# method a free, wrong consensus; an empty box extracts to no answer, which never wins a vote. The
# example's own answer is such a consensus too: the runs that collapse on this data answer 68
# (docs/results.md). It stays, so that every recorded run keeps meaning the same prompt.
ONE_SHOT_SYSTEM_PROMPT = (
    "Solve the math problem. Answer in one short line, as in the example, with the final answer in \\boxed{}.\n"
    "Example:\n"
    "Question: What is 23 + 45?\n"
    "Answer: 23 + 45 = 68. The answer is \\boxed{68}."
)
ONE_SHOT_EXAMPLE_ANSWER = re.search(r"\\boxed\{(\d+)\}", ONE_SHOT_SYSTEM_PROMPT).group(1)  # "68"

# "What is ..."-style wordings: SmolLM2-135M boxes those far more often than "Compute"/"Calculate".
ARITHMETIC_TEMPLATES = {
    "+": [
        "What is {a} + {b}?",
        "What is the sum of {a} and {b}?",
        "How much is {a} plus {b}?",
        "What do you get when you add {b} to {a}?",
    ],
    "-": [
        "What is {a} - {b}?",
        "What is {a} minus {b}?",
        "How much is {b} less than {a}?",
        "What do you get when you subtract {b} from {a}?",
    ],
    "*": [
        "What is {a} * {b}?",
        "What is {a} times {b}?",
        "What is the product of {a} and {b}?",
        "How much is {a} multiplied by {b}?",
    ],
}

WORD_TEMPLATES = {
    "+": [
        "{name} has {a} {item} and buys {b} more. How many {item} does {name} have now?",
        "A basket holds {a} {item}. {name} puts in {b} more {item}. How many {item} are in the basket?",
        "{name} collected {a} {item} in the morning and {b} {item} in the afternoon. How many {item} did {name} collect in total?",
        "There are {a} {item} on a table and {name} brings {b} more. How many {item} are on the table now?",
    ],
    "-": [
        "{name} has {a} {item} and gives {b} of them away. How many {item} does {name} have left?",
        "A box contains {a} {item}. {name} takes out {b} {item}. How many {item} remain in the box?",
        "{name} baked {a} {item} and sold {b} of them. How many {item} were not sold?",
        "There were {a} {item} in a shop. After {name} bought {b}, how many {item} were left in the shop?",
    ],
    "*": [
        "{name} has {a} bags with {b} {item} in each bag. How many {item} does {name} have?",
        "There are {a} rows of {item} with {b} {item} in every row. How many {item} are there?",
        "{name} buys {a} packs of {item}. Each pack has {b} {item}. How many {item} does {name} buy?",
        "Each of {a} children gets {b} {item} from {name}. How many {item} does {name} give out?",
    ],
}

NAMES = ["Tom", "Sara", "Ali", "Mia", "Ben", "Lena", "Omar", "Zoe", "Ivan", "Nora", "Ken", "Rosa"]
ITEMS = ["apples", "pencils", "cookies", "marbles", "stickers", "oranges", "books", "shells", "cards", "eggs"]


Key = tuple[str, int, int]  # (operation, a, b): a problem whatever its wording


@dataclass(frozen=True)
class Problem:
    kind: str  # "arithmetic" | "word"
    op: str
    a: int
    b: int

    @property
    def answer(self) -> int:
        return self.a + self.b if self.op == "+" else self.a - self.b if self.op == "-" else self.a * self.b

    @property
    def key(self) -> Key:
        return self.op, self.a, self.b


# Operand ranges of arithmetic problems (inclusive); "-" draws b from [10, a - 1]
SUM_RANGE, DIFFERENCE_A_RANGE, PRODUCT_RANGE = (10, 99), (20, 99), (2, 12)


def _draw_problem(rng: random.Random, word_fraction: float) -> Problem:
    kind = "word" if rng.random() < word_fraction else "arithmetic"
    op = rng.choice("+-*")
    if op == "+":
        a, b = rng.randint(*SUM_RANGE), rng.randint(*SUM_RANGE) if kind == "arithmetic" else rng.randint(2, 30)
    elif op == "-":
        a = rng.randint(*DIFFERENCE_A_RANGE)
        b = rng.randint(10, a - 1) if kind == "arithmetic" else rng.randint(1, min(30, a - 1))
    else:
        a, b = rng.randint(*PRODUCT_RANGE), rng.randint(*PRODUCT_RANGE)
    return Problem(kind, op, a, b)


def arithmetic_keys(op: str) -> list[Key]:
    """Every (op, a, b) an arithmetic problem of `op` can be (the ranges `_draw_problem` draws from)."""
    if op == "+":
        pairs = [(a, b) for a in range(SUM_RANGE[0], SUM_RANGE[1] + 1) for b in range(SUM_RANGE[0], SUM_RANGE[1] + 1)]
    elif op == "-":
        pairs = [(a, b) for a in range(DIFFERENCE_A_RANGE[0], DIFFERENCE_A_RANGE[1] + 1) for b in range(10, a)]
    elif op == "*":
        pairs = [(a, b) for a in range(PRODUCT_RANGE[0], PRODUCT_RANGE[1] + 1)
                 for b in range(PRODUCT_RANGE[0], PRODUCT_RANGE[1] + 1)]
    else:
        raise ValueError(f"unknown operation {op!r}: use one of + - *")
    return [(op, a, b) for a, b in pairs]


def draw_props(problem: Problem, rng: random.Random) -> tuple[str, str] | None:
    """The name and item of a word problem's rendering (drawn from `rng`); None for arithmetic."""
    if problem.kind == "arithmetic":
        return None
    name = rng.choice(NAMES)
    return name, rng.choice(ITEMS)


def render(problem: Problem, template_id: int, rng: random.Random, props: tuple[str, str] | None = None) -> str:
    """The problem through surface template `template_id` (names/items `props`, else drawn from `rng`)."""
    if problem.kind == "arithmetic":
        templates = ARITHMETIC_TEMPLATES[problem.op]
        return templates[template_id % len(templates)].format(a=problem.a, b=problem.b)
    name, item = props if props is not None else draw_props(problem, rng)
    templates = WORD_TEMPLATES[problem.op]
    return templates[template_id % len(templates)].format(a=problem.a, b=problem.b, name=name, item=item)


def builtin_problems(n: int, seed: int = 0, word_fraction: float = 0.3, exclude: set[str] | None = None,
                     exclude_keys: set[Key] | frozenset[Key] = frozenset()) -> list[dict]:
    """`n` distinct problems: dicts with `question`, `rephrased` (another template, other names and
    items for word problems), `answer` (str), `kind`, `op`, `a`, `b`. Questions in `exclude` and
    problems whose (op, a, b) is in `exclude_keys` (in any wording) are skipped."""
    rng = random.Random(seed)
    seen = set(exclude or ())
    out: list[dict] = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 100 * n + 1000:
            raise RuntimeError(f"could not draw {n} distinct built-in problems")
        problem = _draw_problem(rng, word_fraction)
        templates = (ARITHMETIC_TEMPLATES if problem.kind == "arithmetic" else WORD_TEMPLATES)[problem.op]
        first = rng.randrange(len(templates))
        second = (first + rng.randrange(1, len(templates))) % len(templates)
        question = render(problem, first, rng)
        if question in seen or problem.key in exclude_keys:
            continue
        props = draw_props(problem, rng)
        rephrased = render(problem, second, rng, props)
        seen.add(question)
        out.append({
            "question": question, "rephrased": rephrased, "answer": str(problem.answer),
            "kind": problem.kind, "op": problem.op, "a": problem.a, "b": problem.b,
            "rephrased_template": second, "rephrased_props": props,
        })
    return out


def heldout_problems(counts: dict[str, int], seed: int, exclude_keys: set[Key] | frozenset[Key] = frozenset()) -> list[dict]:
    """Arithmetic problems with distinct (op, a, b), `counts[op]` of each operation, none in
    `exclude_keys`, each in a template drawn from `seed`: a validation set that no training problem
    drawn with `exclude_keys` set to its keys can match in any wording. Grouped by operation."""
    rng = random.Random(seed)
    out = []
    for op, count in counts.items():
        free = [key for key in arithmetic_keys(op) if key not in exclude_keys]
        if count > len(free):
            raise ValueError(f"{count} held-out problems of {op!r} asked for, only {len(free)} (op, a, b) are left")
        for _, a, b in rng.sample(free, count):
            problem = Problem("arithmetic", op, a, b)
            question = render(problem, rng.randrange(len(ARITHMETIC_TEMPLATES[op])), rng)
            out.append({"question": question, "answer": str(problem.answer), "kind": "arithmetic", "op": op, "a": a, "b": b})
    return out


def make_unfaithful(problems: list[dict], fraction: float, seed: int) -> list[dict]:
    """A share `fraction` of the problems (drawn from `seed`, a stream apart from the problems') get a
    rephrased twin with its first number raised by 1..5: the same wording as before, another true
    answer (`rephrased_answer`). Every problem gets `faithful`."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"unfaithful fraction {fraction} must be in [0, 1]")
    rng = random.Random(f"unfaithful-{seed}")
    chosen = set(rng.sample(range(len(problems)), round(fraction * len(problems))))
    out = []
    for i, p in enumerate(problems):
        if i not in chosen:
            out.append({**p, "faithful": True, "rephrased_answer": p["answer"]})
            continue
        twin = Problem(p["kind"], p["op"], p["a"] + rng.randint(1, 5), p["b"])
        rephrased = render(twin, p["rephrased_template"], rng, p["rephrased_props"])  # the same wording
        out.append({**p, "rephrased": rephrased, "faithful": False, "rephrased_answer": str(twin.answer)})
    return out


def write_builtin_dataset(
    out_dir: str | Path,
    n_train: int = 512,
    n_val: int = 64,
    seed: int = 0,
    system_prompt: str | None = ONE_SHOT_SYSTEM_PROMPT,
    word_fraction: float = 0.3,
    unfaithful_fraction: float = 0.0,
    heldout_keys: set[Key] | frozenset[Key] = frozenset(),
    val_problems: list[dict] | None = None,
) -> dict[str, Path]:
    """Write `train.parquet`, `train_rewrite.parquet` (same indices and answers, other wording) and
    `val.parquet` (questions not in train) in the verl schema. Returns {"train", "train_rewrite",
    "val"} -> path. data_source is "builtin_arithmetic" or "builtin_word". With
    `unfaithful_fraction` f > 0, a share f of the twins asks about another number (`make_unfaithful`)
    and, as a rewrite file made by a model would, still carries the original's ground truth;
    `extra_info.faithful` says which pairs, `extra_info.twin_answer` the twin's own answer.
    `heldout_keys`: (op, a, b) that no training or drawn validation problem may be; `val_problems`:
    the validation problems as given (`n_val` is then ignored)."""
    out = Path(out_dir)
    train = builtin_problems(n_train, seed=seed, word_fraction=word_fraction, exclude_keys=heldout_keys)
    train = make_unfaithful(train, unfaithful_fraction, seed)
    val = val_problems if val_problems is not None else builtin_problems(
        n_val, seed=seed + 1_000_003, word_fraction=word_fraction, exclude={p["question"] for p in train},
        exclude_keys=heldout_keys)

    def rows(problems: list[dict], split: str, field: str) -> list[dict]:
        def extra(p: dict) -> dict:
            if unfaithful_fraction > 0 and "faithful" in p:
                return {"faithful": p["faithful"], "twin_answer": p["rephrased_answer"]}
            return {}

        return [
            make_row(
                p[field], p["answer"], index=i, split=split, data_source=f"builtin_{p['kind']}",
                system_prompt=system_prompt, extra_info={"op": p["op"], "rephrased": field == "rephrased", **extra(p)},
            )
            for i, p in enumerate(problems)
        ]

    return {
        "train": write_verl_parquet(rows(train, "train", "question"), out / "train.parquet"),
        "train_rewrite": write_verl_parquet(rows(train, "train", "rephrased"), out / "train_rewrite.parquet"),
        "val": write_verl_parquet(rows(val, "test", "question"), out / "val.parquet"),
    }

