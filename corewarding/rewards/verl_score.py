"""verl's per-response reward, ``compute_score(data_source, solution_str, ground_truth, extra_info=None)``,
as a batch reward of the Method contract (``reward(batch, teacher=None, *, gt_scorer, **reward_kwargs)``).

`VerlScore` calls the function once per rollout as verl's NaiveRewardManager does, with keyword
arguments: `data_source` (the row's), `solution_str` (the decoded response, `response_text`),
`ground_truth` (the row's, None on label-free rows), `extra_info` (a fresh dict per call: `index`, the
dataset row's extra_info.index, and `uid`, `sample_index`, `pair_id`, `view` where the batch has them;
not the dataset's whole extra_info, which the batch does not carry), and every key of
`reward_model.reward_kwargs` (verl's `custom_reward_function.reward_kwargs`). A number is the score; a
dict gives its `score`, and the mean of each of its other numeric keys over the rows that return it
is a metric (logged as ``reward/<key>``; other values are ignored). Rows: `answer` is the response's
last ``\\boxed{}``, `pseudo_label` None. Metrics also: `score_mean`, `answer_present` and, over rows
with a ground truth, `gt_acc` under `gt_scorer` (math-verify time bounded as the label-free methods').
"""

from __future__ import annotations

import inspect
import logging
import numbers
from typing import Any, Callable

from corewarding.batch import Batch
from corewarding.errors import ConfigError
from corewarding.rewards.extraction import extract_boxed_answer
from corewarding.rewards.common import (
    DEFAULT_METRIC_BUDGET_S,
    RewardOutput,
    common_metrics,
    ground_truth_verifier,
    reward_output,
    verify_metrics,
)

__all__ = ["VERL_PARAMETERS", "ComputeScoreError", "VerlScore", "is_verl_shaped", "read_score"]

logger = logging.getLogger(__name__)

VERL_PARAMETERS = ("data_source", "solution_str", "ground_truth")
EXTRA_INFO_ROWS = ("uid", "sample_index", "pair_id", "view")  # passed in extra_info where the batch has them
_OWN = ("batch", "teacher", "gt_scorer", "metric_budget_s")  # the wrapper's parameters, never the function's


class ComputeScoreError(RuntimeError):
    """The user's compute_score raised, or returned what is not a score, on one rollout."""


def is_verl_shaped(fn: Any) -> bool:
    """Does `fn` take verl's `data_source`, `solution_str` and `ground_truth` by name?"""
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return all(name in parameters for name in VERL_PARAMETERS)


def _number(value: Any) -> float | None:
    """`value` as a float when it is a real number (a 0-d tensor or array included), else None."""
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        value = value.item()
    return float(value) if isinstance(value, numbers.Real) else None


def read_score(out: Any) -> tuple[float, dict[str, float]]:
    """(score, numeric extras) of what compute_score returned; ValueError when it is not a score."""
    extras: dict[str, float] = {}
    if isinstance(out, dict):
        if "score" not in out:
            raise ValueError(f"returned a dict without 'score' (keys {sorted(map(str, out))})")
        for key, value in out.items():
            number = _number(value)
            if key != "score" and number is not None:
                extras[str(key)] = number
        out = out["score"]
    score = _number(out)
    if score is None:
        raise ValueError(f"returned {out!r:.60} ({type(out).__name__}); return a float or a dict with a 'score'")
    return score, extras


class VerlScore:
    """verl's ``compute_score`` as a batch reward (the module's docstring says what it passes)."""

    def __init__(self, fn: Callable[..., Any], where: str | None = None) -> None:
        if not is_verl_shaped(fn):
            raise ConfigError(f"{fn!r} does not take verl's {', '.join(VERL_PARAMETERS)} by name")
        self.fn = fn
        self.where = where or f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', fn)}"
        self.__name__ = self.__qualname__ = getattr(fn, "__name__", "compute_score")
        parameters = inspect.signature(fn).parameters
        self._extra_info = "extra_info" in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())
        self.__signature__ = self._signature(parameters)

    @staticmethod
    def _signature(parameters: Any) -> inspect.Signature:
        """The batch contract's parameters, then the function's own extra ones (keyword-only), against
        which `reward_model.reward_kwargs` are checked when the configuration loads."""
        kw = inspect.Parameter.KEYWORD_ONLY
        own = [inspect.Parameter("batch", inspect.Parameter.POSITIONAL_OR_KEYWORD),
               inspect.Parameter("teacher", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None),
               inspect.Parameter("gt_scorer", kw, default="math_verify"),
               inspect.Parameter("metric_budget_s", kw, default=DEFAULT_METRIC_BUDGET_S)]
        skip = (*VERL_PARAMETERS, "extra_info", *_OWN)
        extra = [p.replace(kind=kw) for p in parameters.values()
                 if p.name not in skip and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        var = [p for p in parameters.values() if p.kind is p.VAR_KEYWORD]
        return inspect.Signature(own + extra + var)

    def _call(self, data_source: Any, solution_str: str, ground_truth: Any, extra_info: dict[str, Any],
              kwargs: dict[str, Any]) -> Any:
        if self._extra_info:
            kwargs = {**kwargs, "extra_info": extra_info}
        return self.fn(data_source=data_source, solution_str=solution_str, ground_truth=ground_truth, **kwargs)

    def _row(self, i: int, rows: dict[str, list], ground_truth: Any, kwargs: dict[str, Any]) -> tuple[float, dict[str, float]]:
        """The score and numeric extras of rollout `i`; a `ComputeScoreError` naming the row when the
        function raises or returns no score."""
        source = rows["data_source"][i]
        info = {"index": rows["index"][i] if "index" in rows else None}
        info.update({k: rows[k][i] for k in EXTRA_INFO_ROWS if k in rows})
        where = f"{self.where} on row {i} (data_source={source!r}, index={info['index']!r})"
        try:
            out = self._call(source, rows["response_text"][i], ground_truth, info, kwargs)
        except Exception as exc:  # noqa: BLE001 - the user's function, in one line with its row
            raise ComputeScoreError(f"{where}: {type(exc).__name__}: {' '.join(str(exc).split())}") from exc
        try:
            return read_score(out)
        except ValueError as exc:
            raise ComputeScoreError(f"{where}: {exc}") from None

    def __call__(self, batch: Batch, teacher: Batch | None = None, *, gt_scorer: str = "math_verify",
                 metric_budget_s: float | None = DEFAULT_METRIC_BUDGET_S, **kwargs: Any) -> RewardOutput:
        """Scores [N], one call of the function per rollout; `teacher` is not read."""
        missing = [k for k in ("response_text", "data_source") if k not in batch.rows]
        if missing:
            raise KeyError(f"{self.where} needs batch rows {missing}; the batch has {sorted(batch.rows)}")
        n = len(batch)
        gts = batch.rows.get("ground_truth") or [None] * n
        scores: list[float] = []
        extras: dict[str, list[float]] = {}
        for i in range(n):
            score, extra = self._row(i, batch.rows, gts[i], kwargs)
            scores.append(score)
            for key, value in extra.items():
                extras.setdefault(key, []).append(value)
        answers = [extract_boxed_answer(t) for t in batch.rows["response_text"]]
        verifier = ground_truth_verifier(gt_scorer, metric_budget_s)
        truths = [None if g is None or str(g).strip() == "" else str(g) for g in gts]
        metrics = {k: sum(v) / len(v) for k, v in extras.items()}
        metrics.update(verify_metrics(common_metrics(scores, answers, truths, verifier), verifier))
        return reward_output(scores, metrics, answers, [None] * n)

    def trial(self, **options: Any) -> None:
        """One call on a made-up rollout, when the configuration loads: a return that is no score is a
        `ConfigError`; a raise only a warning (a function may refuse a data source it does not know)."""
        kwargs = {k: v for k, v in options.items() if k not in _OWN}
        try:
            out = self._call("corewarding_trial", "The answer is \\boxed{1}.", "1",
                             {"index": 0, "uid": "corewarding_trial/0", "sample_index": 0}, kwargs)
        except Exception as exc:  # noqa: BLE001 - the user's function
            logger.warning("%s raised %s: %s on a made-up rollout (data_source='corewarding_trial'); fine if it refuses "
                           "unknown data sources, else the first step will fail", self.where, type(exc).__name__, exc)
            return
        try:
            read_score(out)
        except ValueError as exc:
            raise ConfigError(f"{self.where}: on a made-up rollout it {exc}") from None

