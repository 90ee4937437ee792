"""Preprocessing of the public math sets into the verl schema (data/README.md).

Each dataset is a `DatasetSpec`: where it lives on the hub, which field holds the question and
how to get the ground truth. Records come from the hub through `datasets` or from a local file
(`.parquet`, `.jsonl`, `.json`); a local file that is already in the verl schema (a `prompt`
list of chat messages and `reward_model.ground_truth`) is re-emitted with our system prompt and
its own `extra_info.index`. Rows without a question or an answer are dropped and counted.

`extra_info.index` is the record's position in the source (stable, so rewrites made from one
version pair with originals made from another); data_source is the short dataset name, so
validation metrics per data source read "math500", "gsm8k", ...

The authors' rephrased training sets (`math_rephrased`, `dapo_rephrased`, `openrs_rephrased`) are
datasets like the others: each row keeps its original's `extra_info.index` and goes to the file the
run scripts read as the twin (`data/math/train_rewrite_Qwen3-32B.parquet`, ...); `twin_of` names the
originals it pairs with.

The command-line entry is `scripts/preprocess.py`.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import pandas as pd

from corewarding.data.schema import (
    SYSTEM_PROMPT,
    DataError,
    as_index,
    to_plain,
    ground_truth_to_str,
    make_row,
    normalise_messages,
    user_content,
    write_verl_parquet,
)
from corewarding.rewards.extraction import extract_boxed_answer

logger = logging.getLogger(__name__)

_INTEGRAL_FLOAT = re.compile(r"^-?\d+\.0+$")

AnswerFn = Callable[[dict[str, Any]], "str | None"]


def field_answer(name: str) -> AnswerFn:
    return lambda record: ground_truth_to_str(record.get(name))


def boxed_answer(name: str) -> AnswerFn:
    """The last \\boxed{} of a worked solution (MATH's `solution`)."""
    return lambda record: extract_boxed_answer(record.get(name)) if isinstance(record.get(name), str) else None


def gsm8k_answer(record: dict[str, Any]) -> str | None:
    """GSM8K: the number after the final '####', thousands separators removed ('1,234' -> '1234')."""
    text = record.get("answer")
    if not isinstance(text, str) or "####" not in text:
        return None
    answer = text.rsplit("####", 1)[1].strip().replace(",", "")
    return answer.rstrip(".") or None


def reward_model_answer(record: dict[str, Any]) -> str | None:
    reward_model = record.get("reward_model")
    return ground_truth_to_str(reward_model.get("ground_truth")) if isinstance(reward_model, dict) else None


@dataclass(frozen=True)
class DatasetSpec:
    hub_id: str
    splits: dict[str, str]  # our split name -> hub split name
    question_fields: tuple[str, ...]
    answers: tuple[AnswerFn, ...]
    hub_config: str | None = None
    keep: tuple[str, ...] = ()  # source fields copied into extra_info
    twin_of: str | None = None  # a rephrased set: the dataset of its originals (its data_source)
    file_name: str | None = None  # written as <output_dir>/<file_name> instead of <output_dir>/<split>.parquet

    def output_path(self, output_dir: str | Path, split: str) -> Path:
        return Path(output_dir) / (self.file_name or f"{split}.parquet")


DATASETS: dict[str, DatasetSpec] = {
    "math": DatasetSpec(
        "DigitalLearningGmbH/MATH-lighteval", {"train": "train", "test": "test"}, ("problem",),
        (boxed_answer("solution"), field_answer("answer")), hub_config="default", keep=("level", "type"),
    ),
    "dapo": DatasetSpec(  # DAPO-Math-17k deduplicated to ~14k English questions
        "open-r1/DAPO-Math-17k-Processed", {"train": "train"}, ("prompt", "problem"),
        (field_answer("solution"), reward_model_answer, field_answer("answer")), hub_config="en",
    ),
    "openrs": DatasetSpec(
        "knoveleng/open-rs", {"train": "train"}, ("problem",),
        (field_answer("answer"), boxed_answer("solution")), keep=("level",),
    ),
    "gsm8k": DatasetSpec(
        "openai/gsm8k", {"train": "train", "test": "test"}, ("question",), (gsm8k_answer,), hub_config="main",
    ),
    "math500": DatasetSpec(
        "HuggingFaceH4/MATH-500", {"test": "test"}, ("problem",),
        (field_answer("answer"), boxed_answer("solution")), keep=("subject", "level", "unique_id"),
    ),
    "amc": DatasetSpec(  # the 83 AMC 2022-2023 problems of AI-MO (answers stored as floats: 142.0 -> "142")
        "AI-MO/aimo-validation-amc", {"test": "train"}, ("problem", "question"), (field_answer("answer"),), keep=("id", "url"),
    ),
    "amc23": DatasetSpec(
        "math-ai/amc23", {"test": "test"}, ("question", "problem"), (field_answer("answer"),), keep=("id", "url"),
    ),
    "aime24": DatasetSpec(
        "HuggingFaceH4/aime_2024", {"test": "train"}, ("problem", "question"),
        (field_answer("answer"), boxed_answer("solution")), keep=("id", "url"),
    ),
}
_REPHRASED_RELEASES = {"math": "MATH", "dapo": "DAPO-14k", "openrs": "OpenRS"}
DATASETS.update({  # the authors' rephrased sets: rows in verl's schema, each with its original's index
    f"{name}_rephrased": DatasetSpec(
        f"TMLR-Group-HF/Co-rewarding-Rephrased{release}", {"train": "train"}, ("rewritten", "rewrite", "problem", "question"),
        (reward_model_answer, field_answer("answer"), boxed_answer("solution")),
        keep=DATASETS[name].keep, twin_of=name, file_name="train_rewrite_Qwen3-32B.parquet",
    )
    for name, release in _REPHRASED_RELEASES.items()
})


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Records of a local .parquet / .jsonl / .json file as plain Python dicts (no type coercion)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return [to_plain(r) for r in pd.read_parquet(path).to_dict("records")]
    if suffix == ".jsonl":
        records = []
        with path.open(encoding="utf-8") as fh:
            for line_no, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise DataError(f"{path}: line {line_no} is not valid JSON ({exc})") from exc
        return records
    if suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict):  # {"data": [...]} or column-oriented {"col": [...]}
            if len(data) == 1 and isinstance(next(iter(data.values())), list):
                data = next(iter(data.values()))
            else:
                data = pd.DataFrame(data).to_dict("records")
        return list(data)
    raise DataError(f"{path}: unsupported file type {suffix!r} (use .parquet, .jsonl or .json)")


def load_hub_records(spec: DatasetSpec, split: str) -> list[dict[str, Any]]:
    """Records of one split from the hub through `datasets` (the optional extra ``hub``)."""
    try:
        import datasets  # noqa: PLC0415 - only needed online
    except ImportError:
        raise DataError(
            f"reading {spec.hub_id} from the hub needs the `datasets` package: pip install datasets "
            "(or pip install -e '.[hub]'), or give --local_path with a local copy"
        ) from None

    dataset = datasets.load_dataset(spec.hub_id, spec.hub_config, split=spec.splits[split])
    return [dict(r) for r in dataset]


def _is_verl(record: dict[str, Any]) -> bool:
    prompt = record.get("prompt")
    return isinstance(prompt, list) and isinstance(record.get("reward_model"), dict)


def convert_records(
    name: str,
    records: Iterable[dict[str, Any]],
    split: str,
    system_prompt: str | None = SYSTEM_PROMPT,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Source records -> verl-schema rows (see the module docstring)."""
    spec = DATASETS[name]
    rows, dropped = [], []
    for position, record in enumerate(records):
        if limit is not None and len(rows) >= limit:
            break
        try:
            converted = _convert_record(spec, to_plain(record), position)
        except ValueError as exc:
            raise DataError(f"{name}/{split}: record {position}: {exc}") from None
        if converted is None:
            dropped.append(position)
            continue
        question, answer, index, extra = converted
        rows.append(make_row(
            question, answer, index=index, split=split, data_source=spec.twin_of or name,
            system_prompt=system_prompt, extra_info=extra,
        ))
    if dropped:
        logger.warning("%s/%s: dropped %d records without a question or an answer (first: %s)", name, split, len(dropped), dropped[:10])
    logger.info("%s/%s: %d rows", name, split, len(rows))
    return rows


def _convert_record(spec: DatasetSpec, record: dict[str, Any], position: int) -> tuple[str, str, int, dict] | None:
    """(question, answer, index, extra_info) of one source record; None when it has no question or
    no answer; `ValueError` for an answer or index that cannot be read."""
    extra: dict[str, Any] = {}
    if _is_verl(record):  # already preprocessed: keep its question, answer and index
        question = user_content(normalise_messages(record["prompt"], "column 'prompt'"))
        answer = reward_model_answer(record)
        info = record.get("extra_info") or {}
        index = _source_index(spec, info.get("index"), position)
        extra.update({k: v for k, v in info.items() if k not in ("index", "split") and v is not None})
    else:
        question = next((record[f] for f in spec.question_fields if isinstance(record.get(f), str) and record[f].strip()), None)
        answer = next((a for a in (fn(record) for fn in spec.answers) if a), None)
        index = _source_index(spec, record.get("index"), position)
    extra.update({k: record[k] for k in spec.keep if record.get(k) is not None})
    if not question or not answer:
        return None
    if _INTEGRAL_FLOAT.match(answer):  # "142.0" (AMC stores floats) -> "142"
        answer = answer.split(".")[0]
    return question.strip(), answer, index, extra


def _source_index(spec: DatasetSpec, index: Any, position: int) -> int:
    """The record's own index, else its position; a rephrased set must carry its original's index,
    because its rows can be missing (pairing by position would join the wrong questions)."""
    if index is not None:
        return as_index(index)
    if spec.twin_of is not None:
        raise ValueError(f"no extra_info.index (or index field): a rephrased row must name its original in {spec.twin_of}")
    return position


def infer_split(name: str, local_path: str | Path) -> str:
    stem = Path(local_path).stem.lower()
    for split in DATASETS[name].splits:
        if split in stem:
            return split
    return next(iter(DATASETS[name].splits))


def preprocess(
    name: str,
    output_dir: str | Path,
    local_path: str | Path | None = None,
    split: str | None = None,
    system_prompt: str | None = SYSTEM_PROMPT,
    limit: int | None = None,
    output: str | Path | None = None,
) -> dict[str, Path]:
    """Write `<output_dir>/<split>.parquet` for one dataset (every split of the spec when reading
    from the hub without `split`). Returns {split: path}."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; known: {sorted(DATASETS)}")
    spec = DATASETS[name]
    if local_path is not None:
        splits = [split or infer_split(name, local_path)]
    else:
        splits = [split] if split else list(spec.splits)
    unknown = [s for s in splits if s not in spec.splits and local_path is None]
    if unknown:
        raise DataError(f"{name} has splits {list(spec.splits)} on the hub, not {unknown}")
    if output is not None and len(splits) > 1:
        raise DataError("--output names one file: give --split too")
    written = {}
    for s in splits:
        records = read_records(local_path) if local_path is not None else load_hub_records(spec, s)
        rows = convert_records(name, records, s, system_prompt, limit)
        if not rows:
            raise DataError(f"{name}/{s}: no usable rows in {local_path or spec.hub_id}")
        written[s] = write_verl_parquet(rows, output or spec.output_path(output_dir, s))
    return written
