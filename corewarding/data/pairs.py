"""Pair original questions with their rewrites (Co-rewarding-I) on `extra_info.index`."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from corewarding.rewards.answers import normalize_answer
from corewarding.data.schema import DataError, as_files, read_verl_parquet, user_content

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

PAIR_COLUMNS = [
    "index", "ground_truth", "data_source", "ability", "original_prompt", "rephrased_prompt", "extra_info",
]


_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_THOUSANDS = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d*)?")


def _as_number(text: str) -> float | None:
    """A plain decimal number; commas only as real thousands separators ("1,234" but not "1,2")."""
    text = text.strip()
    if _THOUSANDS.fullmatch(text):
        text = text.replace(",", "")
    return float(text) if _NUMBER.fullmatch(text) else None


def same_ground_truth(a: str, b: str) -> bool:
    """Equal as text after light normalisation, or as numbers ("48" and "48.0", "1,234" and
    "1234"; but "1,2" and "12" differ)."""
    if a.strip() == b.strip() or normalize_answer(a) == normalize_answer(b):
        return True
    x, y = _as_number(a), _as_number(b)
    return x is not None and y is not None and x == y


def _check_unique(frame: pd.DataFrame, which: str) -> None:
    duplicated = frame[frame["index"].duplicated(keep=False)]
    if duplicated.empty:
        return
    index = int(duplicated["index"].iloc[0])
    places = duplicated[duplicated["index"] == index]
    files = sorted(set(places["file"]))
    if len(files) == 1:
        rows = places["row"].tolist()
        raise DataError(f"{files[0]}: duplicate extra_info.index {index} (rows {rows}) in the {which} file")
    raise DataError(
        f"extra_info.index {index} appears in several {which} files {files}: indices must be unique across "
        "the files given together (re-index one of them)"
    )


def load_pairs(
    original_files: str | Path | Sequence[str | Path],
    rephrased_files: str | Path | Sequence[str | Path],
    prompt_key: str = "prompt",
    require_ground_truth: bool = True,
) -> pd.DataFrame:
    """One row per (original, rephrased) pair, joined on `extra_info.index`, never by position.

    Columns: `index`, `ground_truth`, `data_source`, `ability`, `original_prompt`,
    `rephrased_prompt` (chat-message lists), `extra_info` (the original's). Rows are in the order
    of the original files. Rows without a partner are dropped and counted in a log line; a
    duplicate index is an error naming the file and the index; a pair whose ground truths differ is
    an error naming the index. The originals must have a ground truth unless
    `require_ground_truth=False`; a rewrite may lack one (the original's is used).
    """
    import pandas as pd

    original_files, rephrased_files = as_files(original_files), as_files(rephrased_files)
    _check_distinct_files(original_files, rephrased_files)
    originals = read_verl_parquet(original_files, prompt_key, require_ground_truth, require_index=True)
    # The original's ground truth is the one used; the rewrite's only has to agree when present.
    rephrased = read_verl_parquet(rephrased_files, prompt_key, require_ground_truth=False, require_index=True)
    _check_unique(originals, "original")
    _check_unique(rephrased, "rephrased")

    merged = originals.merge(
        rephrased[["index", "prompt", "ground_truth", "file", "row"]],
        on="index", how="inner", suffixes=("", "_r"), sort=False, validate="one_to_one",
    )
    pairs = pd.DataFrame({
        "index": merged["index"].astype("int64"),
        "ground_truth": pd.Series(_pair_ground_truths(merged), dtype=object, index=merged.index),
        "data_source": merged["data_source"].astype(object),
        "ability": merged["ability"],
        "original_prompt": merged["prompt"],
        "rephrased_prompt": merged["prompt_r"],
        "extra_info": merged["extra_info"],
    }, columns=PAIR_COLUMNS)
    _check_pairs(pairs, originals, rephrased, original_files, rephrased_files)
    return pairs


def _pair_ground_truths(merged: pd.DataFrame) -> list[str | None]:
    """Each pair's ground truth: the original's, else the rewrite's; an error where both are given
    and differ."""
    gt_o, gt_r = merged["ground_truth"].tolist(), merged["ground_truth_r"].tolist()
    ground_truth = []
    for i, (a, b) in enumerate(zip(gt_o, gt_r)):
        if a is not None and b is not None and not same_ground_truth(a, b):
            raise DataError(
                f"pair with extra_info.index {int(merged['index'].iloc[i])}: ground truths differ: original "
                f"{a!r} ({merged['file'].iloc[i]} row {merged['row'].iloc[i]}) vs rephrased {b!r} "
                f"({merged['file_r'].iloc[i]} row {merged['row_r'].iloc[i]})"
            )
        ground_truth.append(a if a is not None else b)
    return ground_truth


def _check_pairs(pairs: pd.DataFrame, originals: pd.DataFrame, rephrased: pd.DataFrame,
                 original_files: Sequence[Path], rephrased_files: Sequence[Path]) -> None:
    """Refuse no pairs at all and rewrites that are all their originals; log what was dropped and
    the rewrites identical to their original."""
    if pairs.empty:
        raise DataError(
            f"no extra_info.index in common between the originals ({', '.join(map(str, original_files))}, indices "
            f"{_span(originals['index'])}) and the rewrites ({', '.join(map(str, rephrased_files))}, indices "
            f"{_span(rephrased['index'])}): the rewrites must carry their original's index (rewrite_questions.py keeps it)"
        )
    only_original = len(originals) - len(pairs)
    only_rephrased = len(rephrased) - len(pairs)
    unchanged = sum(user_content(a) == user_content(b) for a, b in zip(pairs["original_prompt"], pairs["rephrased_prompt"]))
    message = (
        f"load_pairs: {len(originals)} originals ({', '.join(map(str, original_files))}), {len(rephrased)} rewrites "
        f"({', '.join(map(str, rephrased_files))}) -> {len(pairs)} pairs; dropped {only_original} originals "
        f"without a rewrite and {only_rephrased} rewrites without an original"
    )
    if only_original or only_rephrased:
        missing = sorted(set(originals["index"]) - set(pairs["index"]))[:10]
        logger.warning("%s (first originals dropped: %s)", message, missing)
    else:
        logger.info(message)
    if unchanged == len(pairs):
        raise DataError(
            f"every 'rewrite' in {', '.join(map(str, rephrased_files))} is identical to its original question: "
            "Co-rewarding-I would reduce to majority voting; give the rephrased file made by rewrite_questions.py"
        )
    if unchanged:
        logger.warning("load_pairs: %d pairs have a 'rewrite' identical to the original question", unchanged)


def _check_distinct_files(original_files: Sequence[Path], rephrased_files: Sequence[Path]) -> None:
    """The same file on both sides would pair every question with itself."""
    originals = {Path(f).resolve() for f in original_files}
    for f in rephrased_files:
        if Path(f).resolve() in originals:
            raise DataError(
                f"{f} is given as both the original and the rephrased file (data.train_files and "
                "data.train_aug_files): the rephrased view must be a different file"
            )


def _span(indices: pd.Series) -> str:
    return f"{int(indices.min())}..{int(indices.max())}" if len(indices) else "none"
