"""The verl parquet schema: reading with validation, building rows, writing.

One row per question (data/README.md)::

    prompt       list of chat messages [{role: system, content: SYSTEM_PROMPT}, {role: user, content: q}]
    data_source  str
    ability      "math"
    reward_model {ground_truth: str, style: "rule"}
    extra_info   {index: int, split: str, ...}

`read_verl_parquet` turns one or more such files into a normalised DataFrame and fails with a
`DataError` that names the file, the row and the column of the first problem it finds.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np

# pandas and pyarrow are imported where a file is read or written: a Ray worker, which only tokenizes,
# starts ~0.3 s sooner without them.
if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

SYSTEM_PROMPT = "Let's think step by step and output the final answer within \\boxed{}."

# Columns of the DataFrame that `read_verl_parquet` returns.
NORMALISED_COLUMNS = ["prompt", "ground_truth", "data_source", "ability", "index", "split", "extra_info", "file", "row"]


class DataError(ValueError):
    """A data file does not follow the verl schema; the message names file, row and column."""


def to_plain(value: Any) -> Any:
    """numpy arrays / scalars (what pandas gives for nested parquet columns) -> plain Python."""
    if isinstance(value, np.ndarray):
        return [to_plain(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    return value


def _missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return False


def as_files(files: str | Path | Sequence[str | Path]) -> list[Path]:
    """One path, a comma-separated string of paths, or a list of paths -> list of Paths."""
    if isinstance(files, (str, Path)):
        text = str(files)
        items: list[str | Path] = [p for p in text.split(",") if p.strip()] if "," in text else [text]
    else:
        items = list(files)
    if not items:
        raise DataError("no data files given")
    return [Path(str(p).strip()) for p in items]


def normalise_messages(value: Any, where: str) -> list[dict[str, str]]:
    """A prompt cell -> list of {role, content}. A plain string becomes one user message."""
    if isinstance(value, (np.ndarray, tuple)):
        value = to_plain(value)
    if isinstance(value, str):
        if not value.strip():
            raise DataError(f"{where}: empty prompt")
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: expected a non-empty list of chat messages, got {type(value).__name__}")
    messages = []
    for i, message in enumerate(value):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise DataError(f"{where}: message {i} is not a {{role, content}} dict: {message!r:.120}")
        if not isinstance(message["content"], str):
            raise DataError(f"{where}: message {i} has non-string content {message['content']!r:.120}")
        messages.append({"role": str(message["role"]), "content": message["content"]})
    if not any(m["role"] == "user" for m in messages):
        raise DataError(f"{where}: no user message among roles {[m['role'] for m in messages]}")
    return messages


def user_content(messages: list[dict[str, str]]) -> str:
    """The question: the content of the last user message."""
    for message in reversed(messages):
        if message["role"] == "user":
            return message["content"]
    raise DataError("prompt has no user message")


def ground_truth_to_str(value: Any) -> str | None:
    """Ground truths are strings; integral floats (AMC's 142.0) become '142'. None/NaN/'' -> None.

    A list is read as one answer only when it holds exactly one (an empty list is no answer); a
    list of several answers, a dict or any other structure raises `ValueError`: the reward compares
    one string, and guessing which element (or printing the structure's repr) would silently give
    a reward of 0. Write several solutions of one problem as one string ("2, 3": math-verify
    compares comma lists as sets)."""
    if isinstance(value, (np.ndarray, np.generic)):
        value = to_plain(value)
    if _missing(value):
        return None
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, (list, tuple)):
        if len(value) > 1:
            raise ValueError(
                f"a list of {len(value)} answers {value!r:.120}: give one string (several solutions as one "
                "comma-separated answer, e.g. '2, 3')"
            )
        return ground_truth_to_str(value[0]) if value else None
    if not isinstance(value, (str, int, float)):
        raise ValueError(f"expected a string, got a {type(value).__name__} {value!r:.120}")
    text = str(value).strip()
    return text or None


def as_index(value: Any) -> int:
    """An `extra_info.index`: an integer, or a float / string that is exactly one ('12', 12.0).
    Anything else (11.7, True, 'a') raises `ValueError`: truncating would pair the wrong rows."""
    value = to_plain(value)
    if isinstance(value, bool):
        raise ValueError(f"not an integer: {value!r}")
    if isinstance(value, int):
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"not an integer: {value!r:.60}") from None
    if not number.is_integer():
        raise ValueError(f"not an integer: {value!r:.60}")
    return int(number)


def read_verl_parquet(
    files: str | Path | Sequence[str | Path],
    prompt_key: str = "prompt",
    require_ground_truth: bool = True,
    require_index: bool = False,
) -> pd.DataFrame:
    """Read verl-schema parquet file(s) into one normalised DataFrame.

    Columns: `prompt` (list of {role, content}), `ground_truth` (str, or None when absent and
    `require_ground_truth=False`), `data_source`, `ability`, `index` (extra_info.index; the row
    number in its file when extra_info has none, unless `require_index`), `split`, `extra_info`
    (dict), `file`, `row` (position in its file). Any problem raises `DataError` naming the file,
    the row and the column.
    """
    import pandas as pd
    import pyarrow.parquet as pq

    frames = []
    for path in as_files(files):
        if not path.exists():
            raise DataError(f"{path}: file not found")
        try:
            table = pq.read_table(path)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises many kinds
            raise DataError(f"{path}: cannot read as parquet ({exc})") from exc
        if table.num_rows == 0:
            raise DataError(f"{path}: the file has no rows (columns {table.column_names})")
        # Column-wise to_pylist gives plain Python lists/dicts directly (much faster than pandas).
        columns = {name: table.column(name).to_pylist() for name in table.column_names}
        frames.append(_normalise_frame(columns, table.num_rows, path, prompt_key, require_ground_truth, require_index))
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def _normalise_frame(
    raw: dict[str, list[Any]], n: int, path: Path, prompt_key: str, require_ground_truth: bool, require_index: bool
) -> pd.DataFrame:
    import pandas as pd

    required = [prompt_key] + (["reward_model"] if require_ground_truth else []) + (["extra_info"] if require_index else [])
    missing = [c for c in required if c not in raw]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {missing} (it has {list(raw)}); expected the verl schema: "
            "prompt, data_source, ability, reward_model{ground_truth, style}, extra_info{index, split}"
        )
    prompts = raw[prompt_key]
    reward_models = raw.get("reward_model", [None] * n)
    extra_infos = raw.get("extra_info", [None] * n)
    data_sources = raw.get("data_source", [path.stem] * n)
    abilities = raw.get("ability", ["math"] * n)

    out: dict[str, list[Any]] = {c: [] for c in NORMALISED_COLUMNS}
    for row in range(n):
        where = f"{path}: row {row}"
        out["prompt"].append(normalise_messages(prompts[row], f"{where}, column {prompt_key!r}"))
        out["ground_truth"].append(_row_ground_truth(reward_models[row], where, require_ground_truth))
        extra, index = _row_extra_info(extra_infos[row], row, where, require_index)
        out["index"].append(index)
        out["split"].append(extra.get("split"))
        out["extra_info"].append(extra)
        source = data_sources[row]
        out["data_source"].append(path.stem if _missing(source) else str(source))
        ability = abilities[row]
        out["ability"].append("math" if _missing(ability) else str(ability))
        out["file"].append(str(path))
        out["row"].append(row)
    # object dtype: keeps None as None (pandas 3 would turn a str column's None into NaN)
    frame = pd.DataFrame({c: pd.Series(out[c], dtype=object) for c in NORMALISED_COLUMNS})
    return frame.astype({"index": "int64", "row": "int64"})


def _row_ground_truth(reward_model: Any, where: str, require_ground_truth: bool) -> str | None:
    """The ground truth of one row's `reward_model` cell (None where it has none and none is required)."""
    gt = None
    if isinstance(reward_model, dict):
        try:
            gt = ground_truth_to_str(reward_model.get("ground_truth"))
        except ValueError as exc:
            raise DataError(f"{where}, column 'reward_model.ground_truth': {exc}") from None
    elif not _missing(reward_model) and require_ground_truth:
        raise DataError(f"{where}, column 'reward_model': expected a dict with 'ground_truth', got {reward_model!r:.120}")
    if gt is None and require_ground_truth:
        raise DataError(
            f"{where}, column 'reward_model.ground_truth': no ground truth "
            "(only label-free methods may train without one: require_ground_truth=False)"
        )
    return gt


def _row_extra_info(extra: Any, row: int, where: str, require_index: bool) -> tuple[dict[str, Any], int]:
    """One row's `extra_info` dict ({} where missing) and its index (the row number where it has
    none, unless `require_index`)."""
    if _missing(extra):
        extra = {}
    if not isinstance(extra, dict):
        raise DataError(f"{where}, column 'extra_info': expected a dict, got {extra!r:.120}")
    index = extra.get("index")
    if _missing(index):
        if require_index:
            raise DataError(f"{where}, column 'extra_info.index': missing (needed to pair originals with rewrites)")
        index = row
    try:
        return extra, as_index(index)
    except ValueError as exc:
        raise DataError(f"{where}, column 'extra_info.index': {exc}") from None


def make_row(
    question: str,
    ground_truth: str | None,
    index: int,
    split: str,
    data_source: str,
    system_prompt: str | None = SYSTEM_PROMPT,
    ability: str = "math",
    extra_info: dict[str, Any] | None = None,
    **columns: Any,
) -> dict[str, Any]:
    """One verl-schema row. Extra keyword arguments become extra top-level columns (e.g. level)."""
    messages = []
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt})
    messages.append({"role": "user", "content": question})
    info = {"index": int(index), "split": split}
    info.update(extra_info or {})
    return {
        "data_source": data_source,
        "prompt": messages,
        "ability": ability,
        "reward_model": {"ground_truth": ground_truth, "style": "rule"},
        "extra_info": info,
        **columns,
    }


def write_verl_parquet(rows: Iterable[dict[str, Any]], path: str | Path) -> Path:
    """Write rows (from `make_row`) to parquet atomically (temp file then rename)."""
    import pandas as pd

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(list(rows))
    tmp = path.with_name(path.name + ".tmp")
    frame.to_parquet(tmp, index=False)
    tmp.replace(path)
    return path
