"""The one container that moves between the driver and the workers.

A `Batch` holds row-aligned tensors (first dimension = rows) and row-aligned Python values (`rows`,
one list per key). Every operation keeps rows aligned, so code can reorder, split and regroup a
batch without ever reasoning about positions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import torch


@dataclass
class Batch:
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    rows: dict[str, list[Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rows = {key: list(values) for key, values in self.rows.items()}
        lengths = {f"tensors[{k!r}]": v.shape[0] for k, v in self.tensors.items()}
        lengths.update({f"rows[{k!r}]": len(v) for k, v in self.rows.items()})
        if len(set(lengths.values())) > 1:
            raise ValueError(f"Batch fields have different row counts: {lengths}")

    def __len__(self) -> int:
        for value in self.tensors.values():
            return value.shape[0]
        for value in self.rows.values():
            return len(value)
        return 0

    def __contains__(self, key: str) -> bool:
        return key in self.tensors or key in self.rows

    def __getitem__(self, key: str) -> torch.Tensor | list[Any]:
        if key in self.tensors:
            return self.tensors[key]
        if key in self.rows:
            return self.rows[key]
        raise KeyError(f"Batch has no field {key!r}; it has {sorted([*self.tensors, *self.rows])}")

    def select(self, indices: Sequence[int] | torch.Tensor) -> Batch:
        """Rows at `indices`, in that order (also used to reorder or duplicate rows)."""
        index = torch.as_tensor(indices, dtype=torch.long)
        positions = index.tolist()
        return Batch(
            tensors={k: v[index] for k, v in self.tensors.items()},
            rows={k: [v[i] for i in positions] for k, v in self.rows.items()},
        )

    def split(self, chunk_size: int) -> list[Batch]:
        """Consecutive pieces of `chunk_size` rows (the last may be shorter)."""
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        return [self.select(range(i, min(i + chunk_size, len(self)))) for i in range(0, len(self), chunk_size)]

    def chunk(self, num_chunks: int) -> list[Batch]:
        """Exactly `num_chunks` equal pieces; the row count must divide evenly."""
        if num_chunks <= 0:
            raise ValueError(f"num_chunks must be positive, got {num_chunks}")
        if len(self) == 0:
            return [self.select([]) for _ in range(num_chunks)]
        if len(self) % num_chunks:
            raise ValueError(f"cannot split {len(self)} rows into {num_chunks} equal chunks")
        return self.split(len(self) // num_chunks)

    @staticmethod
    def concat(batches: Iterable[Batch]) -> Batch:
        """Rows of all batches one after another."""
        batches = list(batches)
        if not batches:
            return Batch()
        first = batches[0]
        for other in batches[1:]:
            if set(other.tensors) != set(first.tensors) or set(other.rows) != set(first.rows):
                raise ValueError("cannot concat batches with different fields")
        return Batch(
            tensors={k: torch.cat([b.tensors[k] for b in batches]) for k in first.tensors},
            rows={k: [x for b in batches for x in b.rows[k]] for k in first.rows},
        )

    def repeat_interleave(self, repeats: int) -> Batch:
        """Each row `repeats` times in a row: [a, b] -> [a, a, b, b]."""
        return self.select(torch.arange(len(self)).repeat_interleave(repeats))

    def subset(self, keys: Iterable[str]) -> Batch:
        """A new batch with only `keys` (tensors or rows); `self` is unchanged."""
        keys = list(keys)
        missing = [k for k in keys if k not in self]
        if missing:
            raise KeyError(f"Batch has no fields {missing}")
        return Batch(
            tensors={k: self.tensors[k] for k in keys if k in self.tensors},
            rows={k: self.rows[k] for k in keys if k in self.rows},
        )

    def to(self, device: torch.device | str) -> Batch:
        return Batch({k: v.to(device) for k, v in self.tensors.items()}, dict(self.rows))

