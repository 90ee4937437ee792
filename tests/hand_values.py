"""Compare a result with numbers worked out by hand: float64, the same shape, an absolute tolerance
(the algorithm core's tests, tests/test_algos_*.py)."""

from __future__ import annotations

import torch


def close(actual, expected, tol=1e-5):
    actual = torch.as_tensor(actual, dtype=torch.float64)
    expected = torch.as_tensor(expected, dtype=torch.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert torch.allclose(actual, expected, atol=tol, rtol=0), f"{actual.tolist()} != {expected.tolist()}"
