"""Data in and out: the questions of a verl parquet, the resumable JSONL of records, the parquets."""

from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path
from typing import Any

from corewarding.data.schema import as_index, to_plain

logger = logging.getLogger("rewrite_questions")


def question_of(cell: Any) -> str:
    """The question in a cell: a string, or the last user message of a chat-message list."""
    cell = to_plain(cell)
    if isinstance(cell, str):
        return cell
    if isinstance(cell, list):
        for message in reversed(cell):
            if isinstance(message, dict) and message.get("role") == "user":
                return str(message.get("content", ""))
    raise ValueError(f"cannot find a question (a string or a user message) in {cell!r:.200}")


def with_question(cell: Any, question: str) -> Any:
    cell = copy.deepcopy(to_plain(cell))
    if isinstance(cell, str):
        return question
    for message in reversed(cell):
        if message.get("role") == "user":
            message["content"] = question
            return cell
    raise ValueError("no user message to replace")


class RewriteError(ValueError):
    """Bad input or output paths; the message is one line that says what to fix."""


def check_paths(input_path: str | Path, *outputs: str | Path) -> None:
    """Every output is a different file, and none is the input (it would be overwritten)."""
    seen: dict[Path, str] = {Path(input_path).resolve(): "the input"}
    for output in outputs:
        resolved = Path(output).resolve()
        if resolved in seen:
            raise RewriteError(f"output {output} is also {seen[resolved]}: give every output its own path")
        seen[resolved] = f"another output ({output})"
    for output in outputs:
        if Path(output).exists() and Path(input_path).exists() and os.path.samefile(output, input_path):
            raise RewriteError(f"output {output} is the input file {input_path} (a link to it): give another path")


def load_questions(input_path: str | Path, question_column: str = "prompt", limit: int | None = None):
    """(DataFrame, questions, keys): keys are extra_info.index when present, else the row number."""
    import pandas as pd

    if limit is not None and limit < 1:
        raise RewriteError(f"--limit {limit}: give a positive number of rows (or leave it out for all)")
    df = pd.read_parquet(input_path)
    if question_column not in df.columns:
        raise RewriteError(f"{input_path}: no column {question_column!r} (it has {list(df.columns)})")
    if limit is not None:
        df = df.iloc[:limit].reset_index(drop=True)
    questions = []
    for row, cell in enumerate(df[question_column].tolist()):
        try:
            questions.append(question_of(cell))
        except ValueError as exc:
            raise RewriteError(f"{input_path}: row {row}, column {question_column!r}: {exc}") from exc
    keys: list[int] = []
    for row, info in enumerate(df["extra_info"].tolist() if "extra_info" in df.columns else [None] * len(df)):
        index = to_plain(info).get("index") if isinstance(to_plain(info), dict) else None
        try:
            keys.append(as_index(index) if index is not None else row)
        except ValueError as exc:
            raise RewriteError(f"{input_path}: row {row}, column 'extra_info.index': {exc}") from None
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise RewriteError(f"{input_path}: duplicate extra_info.index {dup}; resume and pairing need unique indices")
    return df, questions, keys


def _record_of(line: bytes) -> dict | None:
    """The record on one JSONL line, or None when the line is not one of this script's records."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict) or record.get("status") not in ("ok", "failed") or "index" not in record:
        return None
    if record["status"] == "ok" and not isinstance(record.get("rewritten"), str):
        return None
    try:
        record["index"] = as_index(record["index"])
    except ValueError:
        return None
    return record


def load_done(output_jsonl: str | Path) -> tuple[dict[int, dict], int]:
    """Records already in the JSONL, by index (the last record of an index wins), and how many
    lines were set aside. A line that is not a record (a crash mid-write, a corrupt line anywhere)
    is moved to `<output_jsonl>.bad` and the file rewritten without it: every good record stays,
    before and after it. A non-empty file without a single record is not this script's: an error."""
    path = Path(output_jsonl)
    done: dict[int, dict] = {}
    if not path.exists():
        return done, 0
    raw = path.read_bytes()
    good, bad = [], []
    for line in raw.splitlines(keepends=True):
        if not line.strip():
            continue
        record = _record_of(line)
        if record is None:
            bad.append(line if line.endswith(b"\n") else line + b"\n")
            continue
        good.append(line if line.endswith(b"\n") else line + b"\n")
        done[record["index"]] = record
    if bad and not good:
        raise RewriteError(
            f"{path}: none of its {len(bad)} lines is a rewrite_questions record; it is not this script's output "
            "(give a new --output_jsonl)"
        )
    if bad or (raw and not raw.endswith(b"\n")):
        _set_aside(path, good, bad)
    return done, len(bad)


def _set_aside(path: Path, good: list[bytes], bad: list[bytes]) -> None:
    """Append `bad` to `<path>.bad`, then replace `path` by the `good` lines (both fsynced)."""
    if bad:
        bad_path = path.with_name(path.name + ".bad")
        with open(bad_path, "ab") as fh:
            fh.writelines(bad)
            fh.flush()
            os.fsync(fh.fileno())
        logger.warning("%s: %d lines that are not records were moved to %s", path, len(bad), bad_path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.writelines(good)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


def write_parquet(df, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    df.to_parquet(tmp, index=False)
    tmp.replace(path)
