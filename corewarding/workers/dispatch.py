"""How the per-rank results of a worker method come back to the driver, declared where the method
is defined (`@collect(rule)`), as verl's `@register(dispatch_mode=...)`. `RayWorkerGroup.dispatch`
splits a batch over the ranks, calls the method on each and applies its rule to the results."""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from corewarding.batch import Batch

F = TypeVar("F", bound=Callable[..., Any])
Rule = Callable[[list[Any]], Any]


def collect(rule: Rule) -> Callable[[F], F]:
    """Declare how `dispatch` combines the method's per-rank results."""

    def mark(method: F) -> F:
        method.collect_rule = rule  # type: ignore[attr-defined]
        return method

    return mark


def concat_rows(results: list[Batch]) -> Batch:
    """Each rank returns the rows of its share: concatenated in rank order (row order preserved)."""
    return Batch.concat(results)


def collect_rule(worker_cls: type, method: str) -> Rule:
    rule = getattr(getattr(worker_cls, method, None), "collect_rule", None)
    if rule is None:
        raise AttributeError(f"{worker_cls.__name__}.{method} declares no @collect rule: it cannot be dispatched")
    return rule
