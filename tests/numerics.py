"""Tolerances that hold on every processor and thread count.

Two float32 computations that are equal in exact arithmetic differ in their last bits by the order of
their sums (BLAS kernel, processor, thread count), and an element-wise absolute tolerance breaks on
the largest elements. Here a result is compared, as a whole tensor, with a reference (float64 where
the test can afford it): the error is ||actual - reference|| / ||reference||, which float32 rounding
keeps near 1e-7 .. 1e-5 whatever the summation order, while a real bug (a token off by one, a weight
left out, a sign) moves it to 1e-2 .. 1.

With COREWARDING_NUMERICS_LOG=<file> set, every comparison appends its test, what, error and bound to
that file as one JSON line, so the margins can be read off a run.
"""

from __future__ import annotations

import json
import os

import torch

# float32 against a float64 reference, and two float32 summation orders of the same sum; each bound
# sits one to two orders of magnitude above the largest error seen on Intel and AMD, 1 and 2 threads.
FORWARD_REL = 1e-5  # log-probs, entropies, self-certainty
GRAD_REL = 1e-4  # gradients of a loss over a few dozen tokens (cancellation in the sums)
WEIGHTS_REL = 2e-6  # weights after an EMA or optimizer step: ~16 float32 epsilons of the weights' size
# bfloat16 compute (float32 logits and loss) against a float64 reference with the same bf16-rounded
# weights, in units of bf16's unit roundoff u = 2^-8: every matmul input is rounded once (a relative
# error of u), a few times along two layers; a real bug moves the result by its whole size (error ~1)
BF16_UNIT = 2.0**-8
BF16_FORWARD_REL = 8 * BF16_UNIT  # log-probs' deviations from their mean (seen: ~1.6 u)
BF16_GRAD_REL = 16 * BF16_UNIT  # gradients (seen: ~3 u)


def _record(what: str, error: float, bound: float) -> None:
    log = os.environ.get("COREWARDING_NUMERICS_LOG")
    if log:
        test = os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0]
        with open(log, "a") as handle:
            handle.write(json.dumps({"test": test, "what": what, "error": error, "bound": bound}) + "\n")


def relative_error(actual: torch.Tensor, reference: torch.Tensor) -> float:
    """||actual - reference|| / ||reference|| in float64 (the absolute norm when the reference is 0)."""
    a, r = actual.detach().to(torch.float64), reference.detach().to(torch.float64)
    if a.shape != r.shape:
        raise AssertionError(f"shapes differ: {tuple(a.shape)} vs {tuple(r.shape)}")
    scale = r.norm()
    difference = (a - r).norm()
    return float(difference / scale) if scale > 0 else float(difference)


def assert_rel_close(actual: torch.Tensor, reference: torch.Tensor, bound: float, what: str = "") -> None:
    """Fail when the whole-tensor relative error exceeds `bound`; say how far it went."""
    error = relative_error(actual, reference)
    _record(what, error, bound)
    assert error <= bound, f"{what}: relative error {error:.3e} > bound {bound:.0e}"


def assert_all_rel_close(actual: dict[str, torch.Tensor], reference: dict[str, torch.Tensor], bound: float,
                         what: str = "") -> None:
    """`assert_rel_close` for every tensor of two dicts with the same keys (gradients, state dicts)."""
    assert set(actual) == set(reference), f"{what}: keys differ: {sorted(set(actual) ^ set(reference))}"
    for name in reference:
        assert_rel_close(actual[name], reference[name], bound, f"{what} {name}".strip())


def assert_scalar_close(actual: float, reference: float, scale: float, bound: float, what: str = "") -> None:
    """|actual - reference| <= bound * scale, for a scalar whose natural magnitude is `scale` (for a
    mean of terms that may cancel to ~0, the mean of their absolute values, not the result)."""
    error = abs(float(actual) - float(reference)) / scale
    _record(what, error, bound)
    assert error <= bound, f"{what}: {actual} vs {reference}, error {error:.3e} of {scale:.3e} > bound {bound:.0e}"


def assert_ema(new: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor], policy: dict[str, torch.Tensor],
               weight: float) -> None:
    """new = weight * teacher + (1 - weight) * policy for every tensor, to WEIGHTS_REL of the weights; and
    the policy is far enough from the teacher (1000 x the bound) that a weight off by 0.01 would fail."""
    expected = {k: weight * teacher[k] + (1 - weight) * policy[k] for k in teacher}
    assert_all_rel_close(new, expected, WEIGHTS_REL, "ema")
    apart = max(relative_error(policy[k], teacher[k]) for k in teacher)
    assert apart > 1e3 * WEIGHTS_REL, f"policy and teacher are {apart:.1e} apart: too close to tell a weight"
