"""Answer extraction, math equivalence (with its time limit) and the majority vote."""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corewarding.rewards import answers as answers_mod
from corewarding.rewards import Vote, answers_equivalent, extract_boxed_answer, majority_vote, normalize_answer



@pytest.fixture(autouse=True)
def generous_default_timeout(monkeypatch):
    """Correctness tests must not depend on machine load (a CI box running several suites at once
    can push an ordinary 5 ms check past the 1 s production limit); the tests of the limit itself
    pass their timeout explicitly."""
    monkeypatch.setattr(answers_mod, "DEFAULT_TIMEOUT", 30.0)


# --------------------------------------------------------------------------------------------
# extraction
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"so the answer is \boxed{5}.", "5"),
        (r"first \boxed{1} then \boxed{2}", "2"),  # the last box
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),  # nested braces
        (r"\boxed{ {a}^{ {b} } }", "{a}^{ {b} }"),  # stripped, deep nesting
        (r"\fbox{7}", "7"),
        (r"\boxed{1} and \fbox{8}", "8"),
        (r"$\boxed 5$", "5"),  # the space form
        (r"\boxed 42 apples", "42"),
        (r"\boxed {9}", "9"),
        (r"\boxed{3", None),  # unbalanced (truncated response)
        (r"\boxed{2} then \boxed{3", None),  # the last box is unbalanced
        (r"\boxed{}", None),
        (r"\boxed{   }", None),
        ("no box here", None),
        ("", None),
        (None, None),
        (r"\boxedx{3}", None),  # not a box command
        (r"\boxed{1} and \boxedx{3}", "1"),  # \boxedx is another macro: the real box decides
    ],
)
def test_extract_boxed_answer(text, expected):
    assert extract_boxed_answer(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"\boxed{1} ... \boxed\frac12", r"\frac12"),  # the last box decides, not the earlier one
        (r"\boxed{1} so $\boxed\frac{1}{2}$.", r"\frac{1}{2}"),  # stops at "$"
        (r"\boxed{1} then \boxed5", "5"),
        (r"{\boxed\pi} done", r"\pi"),  # stops at the brace closing the enclosing group
        (r"\fbox\pi", r"\pi"),
        (r"\boxed \frac{1}{2} apples", r"\frac{1}{2}"),  # the space form, braces kept together
        (r"\boxed 5}", "5"),
        (r"\boxed{1} and then \boxed", None),  # truncated right after the command
        (r"\boxed{1} and then \boxed{", None),  # truncated inside the last box
        (r"\boxed{1} and then \boxed\frac{1}{2", None),  # bare argument with an open brace
        (r"\boxed{1} and then \boxed.", None),  # no digit, letter or command
    ],
)
def test_extract_last_box_without_braces_or_truncated(text, expected):
    assert extract_boxed_answer(text) == expected


def test_extracted_bare_box_is_math_equal():
    assert answers_equivalent(extract_boxed_answer(r"\boxed{1} ... \boxed\frac12"), "0.5")


# --------------------------------------------------------------------------------------------
# normalisation and equivalence
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, expected",
    [
        (r"  \left( 1, 2 \right) ", "(1,2)"),
        (r"\dfrac{1}{2}", r"\frac{1}{2}"),
        (r"\tfrac12", r"\frac12"),
        ("$5$", "5"),
        ("5.", "5"),
        (r"90^\circ", "90"),
        (r"90^{\circ}", "90"),
        (r"10\%", "10"),
        (r"5\text{ cm}", "5"),
        (r"\text{(A)}", "(A)"),
        (r"1\!000", "1000"),
        (r"a \, b", "ab"),
        (r"5\mbox{dollars}", "5"),
        (r"5 \text{degrees}", "5"),
        (r"5\mathrm{cm}", "5"),
        (r"12\text{ m}", "12"),
        (r"3\mathrm{i}", "3i"),  # the imaginary unit is no unit
        (r"1+\mathrm{i}", "1+i"),
        (r"2\mathrm{e}", "2e"),  # nor is Euler's number
        (r"\mathrm{e}^{2}", "e^{2}"),
        (r"3\text{ i}", "3i"),
        (r"1+\text{ cm}", r"1+\text{cm}"),  # removing the unit would leave "1+"
        (r"2\times\text{ cm}", r"2\times\text{cm}"),
        (r"|x|\text{ cm}", "|x|"),
        (None, ""),
        ("   ", ""),
    ],
)
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


@pytest.mark.parametrize(
    "a, b",
    [
        ("0.5", r"\frac{1}{2}"),
        (r"\dfrac12", "0.5"),
        ("1/2", r"\frac{1}{2}"),
        (r"\sqrt{2}/2", r"\frac{\sqrt2}{2}"),
        ("x=3", "3"),  # decision: an equation "var = value" matches the value (math-verify)
        ("3", "x=3"),
        (r"10\%", "10"),  # decision: a percent sign is a unit; 10% == 10 (but != 0.1, below)
        (r"5\text{ cm}", "5"),
        (r"90^\circ", "90"),
        ("1,000", "1000"),
        (r"\{1,2\}", r"\{2,1\}"),
        ("2x", "x2"),
        (" 7 ", "7."),
        (r"\left(1,2\right)", "(1,2)"),
        (r"5\mbox{dollars}", "5"),
        (r"3\mathrm{i}", "3i"),
        (r"1+\mathrm{i}", "1+i"),
        (r"2\mathrm{e}", "2e"),
        (r"\mathrm{e}^{2}", "e^{2}"),
    ],
)
def test_equivalent_positive(a, b):
    assert answers_equivalent(a, b)


@pytest.mark.parametrize(
    "a, b",
    [
        ("2", "3"),
        (r"10\%", "0.1"),
        (r"\pi", "3.14"),
        ("(1,2)", "(2,1)"),
        (r"\frac{\pi}{2}", r"90^\circ"),
        ("a", "b"),
        (None, "1"),
        ("1", None),
        (None, None),
        ("", ""),
        ("  ", "  "),
        (r"3\mathrm{i}", "3"),  # \mathrm{i} is the imaginary unit, not a unit to strip
        (r"1+\mathrm{i}", "1"),
        (r"2\mathrm{e}", "2"),
    ],
)
def test_equivalent_negative(a, b):
    assert not answers_equivalent(a, b)


def _nested_fraction(depth: int) -> str:
    s = "1"
    for _ in range(depth):
        s = r"\frac{1}{" + s + "}"
    return s


@pytest.mark.timeout(10)
def test_pathological_input_returns_in_bounded_time():
    answers_mod.clear_cache()
    start = time.monotonic()
    assert answers_equivalent(_nested_fraction(5000), "1", timeout=1.0) is False
    assert answers_equivalent("1", _nested_fraction(5000), timeout=1.0) is False
    # identical pathological strings are equal by the string fast path, without math-verify
    assert answers_equivalent(_nested_fraction(5000), _nested_fraction(5000)) is True
    elapsed = time.monotonic() - start
    print(f"pathological checks took {elapsed:.3f} s")


@pytest.mark.timeout(10)
def test_pathological_input_off_the_main_thread():
    answers_mod.clear_cache()
    out = []
    worker = threading.Thread(target=lambda: out.append(answers_equivalent(_nested_fraction(5000), "1", timeout=1.0)))
    worker.start()
    worker.join(9)
    assert out == [False]


def _slow_pair(var: str) -> tuple[str, str]:
    """Equal polynomials written in two orders: under the pre-check limits, but math-verify needs
    well over 50 ms for them (~1.5 s). Each test uses its own variable: math-verify caches parses."""
    terms = [f"{var}^{{{i}}}" for i in range(60)]
    a, b = "+".join(terms), "+".join(reversed(terms))
    assert answers_mod._verifiable(a) and answers_mod._verifiable(b)
    return a, b


@pytest.mark.timeout(20)
def test_time_limit_in_main_thread_keeps_callers_alarm():
    """The signal-based limit fires, and a SIGALRM timer armed by the caller (here: pytest-timeout
    plus our own) survives with its remaining time."""
    answers_mod.clear_cache()
    fired = []

    def handler(signum, frame):
        fired.append(signum)

    old = signal.signal(signal.SIGALRM, handler)
    saved_timer = signal.setitimer(signal.ITIMER_REAL, 50.0)
    try:
        a, b = _slow_pair("x")
        start = time.monotonic()
        assert answers_equivalent(a, b, timeout=0.05) is False
        assert 0.04 <= time.monotonic() - start < 5
        assert signal.getsignal(signal.SIGALRM) is handler
        remaining, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 40 < remaining <= 50
        assert fired == []
    finally:
        signal.setitimer(signal.ITIMER_REAL, *saved_timer)
        signal.signal(signal.SIGALRM, old)


@pytest.mark.timeout(30)
def test_time_limit_in_worker_process_restarts_worker():
    answers_mod.clear_cache()
    results = []

    def run():
        a, b = _slow_pair("y")
        answers_equivalent("0.75", r"\frac{3}{4}")  # start the worker: its start-up is not timed
        start = time.monotonic()
        results.append(answers_equivalent(a, b, timeout=0.05))
        results.append(time.monotonic() - start)
        # the worker was killed; the next check starts a fresh one and still works
        results.append(answers_equivalent("0.25", r"\frac{1}{4}"))

    restarts = answers_mod._WORKER.restarts
    worker = threading.Thread(target=run)
    worker.start()
    worker.join(25)
    assert results[0] is False and 0.04 <= results[1] < 5 and results[2] is True
    assert answers_mod._WORKER.restarts == restarts + 1


def test_process_backend_agrees_with_signal_backend(monkeypatch):
    pairs = [("0.5", r"\frac{1}{2}"), ("x=3", "3"), ("2", "3"), (r"\sqrt{2}/2", r"\frac{\sqrt2}{2}")]
    answers_mod.clear_cache()
    by_signal = [answers_equivalent(a, b) for a, b in pairs]
    monkeypatch.setenv("COREWARDING_VERIFY_BACKEND", "process")
    answers_mod.clear_cache()
    by_process = [answers_equivalent(a, b) for a, b in pairs]
    assert by_signal == by_process == [True, True, False, True]


def test_results_are_cached():
    answers_mod.clear_cache()
    answers_equivalent("0.5", r"\frac12")
    before = answers_mod._RESULTS.hits
    answers_equivalent(" 0.5 ", r"\dfrac12")  # same normalised pair
    assert answers_mod._RESULTS.hits == before + 1


def test_timed_out_check_is_not_cached(monkeypatch):
    """A timeout (e.g. a CPU starved by other work) must not become a permanent false negative."""
    answers_mod.clear_cache()
    outcomes = iter([None, True])  # first call times out, the retry succeeds
    monkeypatch.setattr(answers_mod, "check_with_alarm", lambda pred, gold, timeout: next(outcomes))
    monkeypatch.setattr(answers_mod._WORKER, "check", lambda pred, gold, timeout: next(outcomes))
    assert answers_equivalent("0.25", r"\frac{1}{4}") is False
    assert answers_equivalent("0.25", r"\frac{1}{4}") is True
    assert answers_equivalent("0.25", r"\frac{1}{4}") is True  # now cached: no third check
    answers_mod.clear_cache()


# --------------------------------------------------------------------------------------------
# majority vote: hand-made
# --------------------------------------------------------------------------------------------


def test_vote_math_merges_spellings():
    vote = majority_vote(["3", "0.5", r"\frac{1}{2}", "1/2", r"\dfrac12", "3", "1/2", None])
    # class {0.5, \frac{1}{2}, 1/2, \dfrac12} has 5 of 8; its most frequent spelling is "1/2"
    assert vote == Vote("1/2", 5 / 8, 7)


def test_vote_string_splits_spellings():
    vote = majority_vote(["3", "0.5", r"\frac{1}{2}", "1/2", r"\dfrac12", "3", "1/2", None], "string")
    # "3" and "1/2" both twice: first seen wins (Counter.most_common)
    assert vote == Vote("3", 2 / 8, 7)


def test_vote_ties():
    assert majority_vote(["2", "3", "3", "2"]).label == "2"  # classes tie: first seen
    assert majority_vote(["0.5", "1/2"]).label == "0.5"  # spellings tie: first seen
    assert majority_vote([" 4 ", "4"], "string") == Vote("4", 1.0, 2)  # strip


def test_vote_none_and_empty_never_win():
    assert majority_vote([None, None, "", "  "]) == Vote(None, 0.0, 0)
    assert majority_vote([]) == Vote(None, 0.0, 0)
    assert majority_vote([None, None, None, "5"]) == Vote("5", 0.25, 1)
    assert majority_vote([None, None, None, "5"], "string") == Vote("5", 0.25, 1)


def test_vote_bad_equivalence():
    with pytest.raises(ValueError, match="equivalence"):
        majority_vote(["1"], "fuzzy")


# --------------------------------------------------------------------------------------------
# majority vote: properties
# --------------------------------------------------------------------------------------------

CLASSES = {
    "half": ["0.5", r"\frac{1}{2}", "1/2", r"\dfrac12"],
    "three": ["3", "3.0", r"\frac{6}{2}"],
    "root2": [r"\sqrt{2}", r"2^{1/2}"],
    "seven": ["7"],
}
CLASS_OF = {spelling: name for name, spellings in CLASSES.items() for spelling in spellings}
ANSWER = st.one_of(st.sampled_from(sorted(CLASS_OF)), st.sampled_from([None, "", "  "]))


def test_property_classes_are_what_the_tests_assume():
    for name, spellings in CLASSES.items():
        for a in spellings:
            for other, others in CLASSES.items():
                for b in others:
                    assert answers_equivalent(a, b) == (name == other), (a, b)


def _class_sizes(answers):
    return Counter(CLASS_OF[a] for a in answers if a is not None and a.strip())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(ANSWER, max_size=16), st.randoms(use_true_random=False))
def test_property_vote_math(answers, rnd):
    vote = majority_vote(answers)
    sizes = _class_sizes(answers)
    assert vote.n_valid == sum(sizes.values())
    if not sizes:
        assert vote == Vote(None, 0.0, 0)
        return
    best = max(sizes.values())
    assert vote.ratio == best / len(answers)
    assert sizes[CLASS_OF[vote.label]] == best
    # ties between classes: the class seen first
    first_best = next(CLASS_OF[a] for a in answers if a is not None and a.strip() and sizes[CLASS_OF[a]] == best)
    assert CLASS_OF[vote.label] == first_best
    # the label is the class's most frequent spelling, first seen on a tie
    spellings = Counter(a.strip() for a in answers if a is not None and a.strip() and CLASS_OF[a] == first_best)
    assert vote.label == spellings.most_common(1)[0][0]
    # permutation: same ratio and n_valid; same class whenever one class wins outright
    shuffled = list(answers)
    rnd.shuffle(shuffled)
    other = majority_vote(shuffled)
    assert (other.ratio, other.n_valid) == (vote.ratio, vote.n_valid)
    if list(sizes.values()).count(best) == 1:
        assert CLASS_OF[other.label] == CLASS_OF[vote.label]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.none(), st.sampled_from(["1", " 1", "2", "2 ", "", "0.5", "1/2", " "])), max_size=16))
def test_property_vote_string_is_the_release(answers):
    valid = [a.strip() for a in answers if a is not None and a.strip()]
    if valid:
        label, count = Counter(valid).most_common(1)[0]
        expected = Vote(label, count / len(answers), len(valid))
    else:
        expected = Vote(None, 0.0, 0)
    assert majority_vote(answers, "string") == expected
