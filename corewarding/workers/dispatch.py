"""How a worker group calls a worker method on its ranks, declared on the method itself with
`@register(dispatch, collect)`, as verl's `@register(dispatch_mode=...)`: the dispatch says what each
rank gets (`Dispatch`), the collect rule how the ranks' results become one answer. Every rule answers
with what one worker answers, so that a group reads as one worker (`worker_api.WorkerGroup`). A
method without a declaration cannot be called through a group."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from corewarding.batch import Batch

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")
RankCalls = list[tuple[tuple[Any, ...], dict[str, Any]]]  # each rank's (args, kwargs)


class Dispatch(enum.Enum):
    SAME_ARGS = "every rank gets the same arguments"
    SPLIT_ROWS = "the first argument, a Batch, is cut into equal consecutive shares of rows, one per rank"


@dataclass(frozen=True)
class Declaration:
    dispatch: Dispatch
    collect: Callable[[list[Any]], Any]


def register(dispatch: Dispatch, collect: Callable[[list[T]], T]) -> Callable[[F], F]:
    """Declare how a worker group calls the method: what each rank gets, how the results combine."""

    def mark(method: F) -> F:
        method.dispatch_declaration = Declaration(dispatch, collect)  # type: ignore[attr-defined]
        return method

    return mark


def declaration_of(method: Callable[..., Any]) -> Declaration:
    """The method's `@register` declaration; a TypeError for a method without one."""
    declaration = getattr(method, "dispatch_declaration", None)
    if not isinstance(declaration, Declaration):
        raise TypeError(f"{method.__qualname__} declares no @register(dispatch, collect): a worker group cannot call it")
    return declaration


def first_rank(results: list[T]) -> T:
    """The first rank's answer: the ranks agree, only rank 0 holds it, or there is none (None)."""
    return results[0]


def concat_rows(results: list[Batch]) -> Batch:
    """Each rank returns the rows of its share: concatenated in rank order (row order preserved)."""
    return Batch.concat(results)


def rank_calls(name: str, dispatch: Dispatch, world_size: int, args: tuple[Any, ...],
               kwargs: dict[str, Any]) -> RankCalls:
    """Each rank's arguments of one call of the method `name`, as its dispatch says."""
    if dispatch is Dispatch.SAME_ARGS:
        return [(args, kwargs)] * world_size
    if not args or not isinstance(args[0], Batch):
        raise TypeError(f"{name} splits its first argument's rows over the ranks: pass the Batch first, by position")
    batch, *rest = args
    return [((share, *rest), kwargs) for share in split_rows(name, batch, world_size)]


def split_rows(name: str, batch: Batch, world_size: int) -> list[Batch]:
    """`world_size` equal consecutive shares of the rows (one rank: the batch itself)."""
    if world_size == 1:
        return [batch]
    if len(batch) % world_size:
        raise ValueError(
            f"{name}: {len(batch)} rows cannot be split evenly over {world_size} workers "
            f"(trainer.nnodes x trainer.n_gpus_per_node): choose data.train_batch_size (prompts; rows = "
            "prompts x actor_rollout_ref.rollout.n) and data.val_batch_size as multiples of the worker count"
        )
    return batch.chunk(world_size)
