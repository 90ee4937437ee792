"""`actor.use_torch_compile`: a run with it compiles the output head's passes (actor and reference
forwards, the update's backward) and logs what the uncompiled run logs, to float32 rounding."""

from __future__ import annotations

import math

import torch

from corewarding.algos import logits

from compile_support import needs_compiler
from one_process_run import one_process_overrides, run_in_process

# the first step's rollouts are the same in both runs (sampled before any update), so everything it
# logs from the forwards and the update must agree; times and throughput do not
NOT_COMPARED = ("timing/", "perf/", "tok/s")
REL = 1e-4  # float32 logits, summed over a few dozen tokens and the model's parameters


@needs_compiler
def test_a_compiled_run_uses_the_compiled_head_and_logs_what_the_uncompiled_run_logs(boxing_model, tmp_path, monkeypatch):
    from corewarding.data import write_builtin_dataset

    data = write_builtin_dataset(tmp_path / "data", n_train=8, n_val=4, seed=0)
    grad_enabled = []  # at each call for the compiled kernels: the update's forward (True), the reference's (False)
    compiled = logits.compiled_kernels
    monkeypatch.setattr(logits, "compiled_kernels", lambda: grad_enabled.append(torch.is_grad_enabled()) or compiled())
    steps = {}
    for flag in (False, True):
        overrides = one_process_overrides(boxing_model, data, tmp_path / f"compile-{flag}", 1, 4, 2,
                                          "+method=majority_voting", f"actor_rollout_ref.actor.use_torch_compile={flag}")
        (steps[flag],) = [s for s in run_in_process(overrides) if s["step"] == 1]
        assert set(grad_enabled) == ({True, False} if flag else set())
    eager, fused = steps[False], steps[True]
    keys = [k for k in eager if not k.startswith(NOT_COMPARED) and isinstance(eager[k], float)]
    assert "actor/pg_loss" in keys and "actor/grad_norm" in keys and "actor/kl_loss" in keys
    for key in keys:
        assert math.isclose(fused[key], eager[key], rel_tol=REL, abs_tol=1e-6), (key, fused[key], eager[key])
