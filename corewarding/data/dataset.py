"""RL datasets over verl-schema parquet files, batching into `Batch`, and a resumable loader.

- `RLDataset`: one prompt per item, chat template applied (add_generation_prompt=True), then the
  `data.max_prompt_length` filter / truncation.
- `PairedRLDataset` (Co-rewarding-I): one (original, rephrased) pair per item, built on
  `load_pairs`; a pair is dropped when either side is too long.
- `to_batch(items)`: items -> a `Batch` of rows: the prompts as token-id lists (`prompt_ids`, padded
  once, by the worker) and `prompt_messages`, `ground_truth`, `data_source`, `index`, `uid`.
  A batch of B pairs becomes 2B prompt rows: **the B originals first, then the B rephrased
  questions in the same pair order** (row i and row B+i share `pair_id`); rows `pair_id` and
  `view` ("original" / "rephrased") say which is which, and `views_swapped` whether the loader
  swapped the pair's roles (see below). Pairs whose `extra_info` carries `faithful` (the built-in
  data's unfaithful twins) also give rows `faithful` and `twin_answer` (`PAIR_DIAGNOSTIC_KEYS`),
  which Co-rewarding-I's reward splits its pseudo-label accuracy by.
- `StatefulLoader`: deterministic shuffling per (seed, epoch), `state_dict()` / `load_state_dict()`
  with (epoch, position) so a checkpoint resumes at the exact next batch. With `view_swap_p`
  (`data.p`, Co-rewarding-II with `data.use_aug`) each pair's roles are swapped with probability
  p: the release's paired dataset hands the policy the rephrased question and the teacher the
  original when it swaps. The draw depends on (seed, epoch, item) only, so it is deterministic
  and a resumed run sees the same swaps.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from corewarding.batch import Batch
from corewarding.data.chat import chat_prompt_ids
from corewarding.data.pairs import load_pairs
from corewarding.data.schema import DataError, read_verl_parquet
from corewarding.roles import Roles

logger = logging.getLogger(__name__)

TRUNCATION_MODES = ("error", "left", "right")
_SWAP_STREAM = 1  # third seed word of the view-swap draws: a stream apart from the order's (seed, epoch)
ROW_KEYS = ("prompt_messages", "ground_truth", "data_source", "index", "uid")
# extra_info fields of a pair (write_builtin_dataset with unfaithful_fraction > 0: is the twin
# faithful, the twin's own answer) that become batch rows for the reward's metrics; datasets without
# them carry nothing extra
PAIR_DIAGNOSTIC_KEYS = ("faithful", "twin_answer")


def _fit(ids: list[int], max_len: int, truncation: str, where: str) -> list[int]:
    if len(ids) <= max_len:
        return ids
    if truncation == "left":
        return ids[-max_len:]
    if truncation == "right":
        return ids[:max_len]
    raise DataError(
        f"{where}: prompt has {len(ids)} tokens > data.max_prompt_length={max_len} "
        "(set data.filter_overlong_prompts=true or data.truncation=left|right)"
    )


def _check_truncation(truncation: str) -> None:
    if truncation not in TRUNCATION_MODES:
        raise ValueError(f"data.truncation must be one of {TRUNCATION_MODES}, got {truncation!r}")


class _PromptDataset:
    """The constructor both datasets share: read the rows (`_read`), keep the first `max_samples`,
    tokenise each view with the chat template, drop (`filter_overlong_prompts`) or fit (`truncation`)
    the prompts over `max_prompt_length` tokens, and build one item per row (`_item`)."""

    kind = "prompts"  # what an item is, in the messages
    overlong = "prompts"  # what the length filter drops, in the log line

    def __init__(
        self,
        tokenizer: Any,
        max_prompt_length: int = 512,
        prompt_key: str = "prompt",
        filter_overlong_prompts: bool = True,
        truncation: str = "error",
        require_ground_truth: bool = True,
        max_samples: int | None = None,
    ) -> None:
        _check_truncation(truncation)
        self.tokenizer = tokenizer
        self.max_prompt_length = max_prompt_length
        frame = self._read(prompt_key, require_ground_truth)
        if max_samples is not None:
            frame = frame.iloc[:max_samples]
        ids = {view: chat_prompt_ids(tokenizer, frame[column].tolist()) for view, column in self._views()}
        items, dropped = [], 0
        for i, rec in enumerate(frame.itertuples(index=False)):
            if filter_overlong_prompts and max(len(view_ids[i]) for view_ids in ids.values()) > max_prompt_length:
                dropped += 1
                continue
            fitted = {view: _fit(view_ids[i], max_prompt_length, truncation, self._where(rec, view)) for view, view_ids in ids.items()}
            items.append(self._item(rec, fitted))
        if dropped:
            logger.info("%s: dropped %d of %d %s longer than %d tokens",
                        type(self).__name__, dropped, len(frame), self.overlong, max_prompt_length)
        if not items:
            raise DataError(f"{self._sources()}: no {self.kind} left (after the max_prompt_length={max_prompt_length} filter)")
        self.items = items
        self.num_filtered = dropped

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.items[i]


def _fields(rec: Any, input_ids: list[int], messages: Any, uid: str) -> dict[str, Any]:
    """The fields of a prompt item that every dataset gives."""
    return {
        "input_ids": input_ids,
        "prompt_messages": messages,
        "ground_truth": rec.ground_truth,
        "data_source": rec.data_source,
        "index": rec.index,
        "ability": rec.ability,
        "extra_info": rec.extra_info,
        "uid": uid,
    }


class RLDataset(_PromptDataset):
    """Prompts from verl-schema parquet file(s), tokenised with the model's chat template.

    Items are dicts: `input_ids` (list[int]), `prompt_messages`, `ground_truth` (None only with
    `require_ground_truth=False`), `data_source`, `index` (extra_info.index), `ability`,
    `extra_info`, `uid` (a string unique in the dataset: "<data_source>/<index>" plus the file when
    several files are given). The other arguments are `_PromptDataset`'s.
    """

    def __init__(self, files: str | Path | Sequence[str | Path], tokenizer: Any, *args: Any, **kwargs: Any) -> None:
        self.files = files
        super().__init__(tokenizer, *args, **kwargs)

    def _sources(self) -> str:
        return str(self.files)

    def _read(self, prompt_key: str, require_ground_truth: bool):
        frame = read_verl_parquet(self.files, prompt_key, require_ground_truth)
        self._several_files = frame["file"].nunique() > 1
        return frame

    def _views(self) -> tuple[tuple[str, str], ...]:
        return (("prompt", "prompt"),)

    def _where(self, rec: Any, view: str) -> str:
        return f"{rec.file}: row {rec.row}"

    def _item(self, rec: Any, ids: dict[str, list[int]]) -> dict[str, Any]:
        uid = f"{rec.data_source}/{rec.index}"
        if self._several_files:
            uid = f"{Path(rec.file).name}:{uid}"
        return _fields(rec, ids["prompt"], rec.prompt, uid)


class PairedRLDataset(_PromptDataset):
    """Pairs (original, rephrased) for Co-rewarding-I, joined on extra_info.index by `load_pairs`.

    Items: {"pair_id": index, "original": item, "rephrased": item} where each sub-item is like an
    `RLDataset` item plus `pair_id` and `view`. The ground truth is shared by both views; a pair is
    dropped when either side is too long. The other arguments are `_PromptDataset`'s.
    """

    kind = "pairs"
    overlong = "pairs with a side"

    def __init__(
        self,
        original_files: str | Path | Sequence[str | Path],
        rephrased_files: str | Path | Sequence[str | Path],
        tokenizer: Any,
        *args: Any,
        **kwargs: Any,
    ) -> None:
        self.original_files, self.rephrased_files = original_files, rephrased_files
        super().__init__(tokenizer, *args, **kwargs)

    def _sources(self) -> str:
        return f"{self.original_files} + {self.rephrased_files}"

    def _read(self, prompt_key: str, require_ground_truth: bool):
        frame = load_pairs(self.original_files, self.rephrased_files, prompt_key, require_ground_truth)
        # decided once for the dataset, not per item: every batch then has the same rows (dynamic
        # sampling concatenates several), None where a pair lacks the fields
        self._diagnostics = any(isinstance(info, dict) and "faithful" in info for info in frame["extra_info"])
        return frame

    def _views(self) -> tuple[tuple[str, str], ...]:
        return (("original", "original_prompt"), ("rephrased", "rephrased_prompt"))

    def _where(self, rec: Any, view: str) -> str:
        return f"pair with extra_info.index {rec.index} ({view})"

    def _item(self, rec: Any, ids: dict[str, list[int]]) -> dict[str, Any]:
        item: dict[str, Any] = {"pair_id": rec.index}
        for view, messages in (("original", rec.original_prompt), ("rephrased", rec.rephrased_prompt)):
            fields = _fields(rec, ids[view], messages, f"{rec.data_source}/{rec.index}/{view}")
            item[view] = {**fields, "pair_id": rec.index, "view": view}
            if self._diagnostics:
                item[view].update(_pair_diagnostics(rec.extra_info))
        return item


def _pair_diagnostics(extra_info: dict[str, Any] | None) -> dict[str, Any]:
    """`faithful` (bool) and `twin_answer` (str) of a pair's extra_info, None where absent."""
    info = extra_info or {}
    faithful, twin = info.get("faithful"), info.get("twin_answer")
    return {"faithful": None if faithful is None else bool(faithful), "twin_answer": None if twin is None else str(twin)}


def left_pad(sequences: Sequence[Sequence[int]], pad_token_id: int, width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded (input_ids, attention_mask) of shape (len(sequences), width or the longest)."""
    longest = max((len(s) for s in sequences), default=0)
    if width is None:
        width = longest
    elif width < longest:
        raise ValueError(f"cannot left-pad a sequence of {longest} tokens to {width}")
    input_ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if len(seq):
            input_ids[row, width - len(seq):] = torch.as_tensor(list(seq), dtype=torch.long)
            attention_mask[row, width - len(seq):] = 1
    return input_ids, attention_mask


def to_batch(items: Sequence[dict[str, Any]], roles: Roles | None = None) -> Batch:
    """Items of `RLDataset` or `PairedRLDataset` -> one `Batch` of prompts, rows only (the prompts
    travel as token-id lists; the worker pads them once, where it needs a tensor).

    Rows: `prompt_ids`, `prompt_messages`, `ground_truth`, `data_source`, `index`, `uid`; for pairs
    also `pair_id` and `view`: B pairs give 2B rows, originals first (rows 0..B-1) then the
    rephrased twins in the same order (rows B..2B-1), and `views_swapped` (the pair's flag from the
    loader, False when absent) on both rows of a pair; `faithful` / `twin_answer` when the
    dataset has them (`PAIR_DIAGNOSTIC_KEYS`). With the run's `roles`, pairs also get the rows
    `for_policy` / `for_teacher`: which side rolls out on each row (`Roles.row_roles`).
    """
    items = list(items)
    if not items:
        raise ValueError("to_batch needs at least one item")
    paired = "original" in items[0]
    prompts = [it["original"] for it in items] + [it["rephrased"] for it in items] if paired else items
    keys = ROW_KEYS + (("pair_id", "view") if paired else ())
    if paired and "faithful" in items[0]["original"]:
        keys += PAIR_DIAGNOSTIC_KEYS
    rows = {key: [p[key] for p in prompts] for key in keys}
    rows["prompt_ids"] = [list(p["input_ids"]) for p in prompts]
    if paired:
        rows["views_swapped"] = [bool(it.get("views_swapped", False)) for it in items] * 2
        if roles is not None:
            rows["for_policy"], rows["for_teacher"] = roles.row_roles(rows["view"], rows["views_swapped"])
    return Batch(rows=rows)


class StatefulLoader:
    """Deterministic, resumable batches over a dataset.

    `for batch in loader` runs over what is left of the current epoch. The order of epoch e is a
    permutation drawn from (seed, e) alone, so a resumed run sees the same batches. `position` is
    the number of batches of the current epoch already handed out; it advances *before* a batch is
    yielded, and after the last batch of an epoch the state is already (epoch + 1, 0): saving
    `state_dict()` after training on a batch resumes at the next one.

    `view_swap_p` (paired datasets only): every item of epoch e gets `views_swapped`, True with
    probability p, drawn from (seed, e) alone like the order (see `swapped_views`).
    """

    def __init__(
        self,
        dataset: Any,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = True,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        view_swap_p: float | None = None,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if view_swap_p is not None and not 0.0 <= view_swap_p <= 1.0:
            raise ValueError(f"data.p={view_swap_p} must be in [0, 1] (the probability of swapping a pair's views)")
        if drop_last and len(dataset) < batch_size:
            raise ValueError(
                f"data.train_batch_size={batch_size} is larger than the dataset ({len(dataset)} items): no full batch"
            )
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.view_swap_p = view_swap_p
        self.collate_fn = collate_fn or to_batch
        self.epoch = 0
        self.position = 0
        self.batch_epoch = 0  # the epoch of the batch handed out last

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def order(self, epoch: int) -> list[int]:
        n = len(self.dataset)
        if not self.shuffle:
            return list(range(n))
        return np.random.default_rng([self.seed, epoch]).permutation(n).tolist()

    def swapped_views(self, epoch: int) -> list[bool]:
        """Per dataset item: are its views swapped in `epoch` (uniform draw < view_swap_p, from a
        stream of (seed, epoch) separate from the order's)."""
        if self.view_swap_p is None:
            return [False] * len(self.dataset)
        draws = np.random.default_rng([self.seed, epoch, _SWAP_STREAM]).random(len(self.dataset))
        return (draws < self.view_swap_p).tolist()

    def _items(self, indices: list[int], swapped: list[bool]) -> list[Any]:
        items = [self.dataset[i] for i in indices]
        if self.view_swap_p is None:
            return items
        if not all(isinstance(it, dict) and "original" in it for it in items):
            raise ValueError("data.p swaps the views of (original, rephrased) pairs: the dataset has no pairs")
        return [{**it, "views_swapped": swapped[i]} for it, i in zip(items, indices)]

    def __iter__(self) -> Iterator[Any]:
        epoch, order, swapped = self.epoch, self.order(self.epoch), self.swapped_views(self.epoch)
        while self.epoch == epoch and self.position < len(self):
            start = self.position * self.batch_size
            chosen = order[start:start + self.batch_size]
            self.position += 1
            if self.position >= len(self):
                self.epoch, self.position = epoch + 1, 0
            self.batch_epoch = epoch
            yield self.collate_fn(self._items(chosen, swapped))

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch, "position": self.position, "seed": self.seed, "p": self.view_swap_p,
            "batch_size": self.batch_size, "dataset_size": len(self.dataset),
        }

    def load_state_dict(self, state: dict[str, Any], allow_sampling_change: bool = False) -> None:
        """Resume at the checkpoint's (epoch, position). Another batch size or dataset is refused;
        another seed or data.p too (the prompt stream would change) unless `allow_sampling_change`
        (`data.resume_allow_sampling_change`)."""
        for key, current in (("batch_size", self.batch_size), ("dataset_size", len(self.dataset))):
            if key in state and int(state[key]) != current:
                raise ValueError(
                    f"cannot resume the data loader: the checkpoint has {key}={state[key]} but this run has {current} "
                    "(resume with the same data and batch size)"
                )
        for key, current in (("seed", self.seed), ("p", self.view_swap_p)):
            if key in state and state[key] != current and not allow_sampling_change:
                raise ValueError(
                    f"cannot resume the data loader: the checkpoint has data.{key}={state[key]} but this run has "
                    f"data.{key}={current}; resume with data.{key}={state[key]}, or set "
                    "data.resume_allow_sampling_change=true to go on with the new value (the prompt stream changes from here)"
                )
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
