"""Rewriting a dataset: batches with retries, resumable, then the two parquets (same rows, same order).

Resumable: each batch is appended to the JSONL and flushed to disk before the next one starts; a
rerun skips every question whose `index` (extra_info.index, else the row number) is already in the
JSONL, so a crash loses at most the batch in flight. The parquets are written at the end from the
JSONL: the rephrased rows and the originals that were kept, same rows, same order (the input's).
Records of failed questions stay in the JSONL (`status: failed`) and are not retried on a rerun
unless `retry_failed`. A question that still fails after its retries is left out of *both*
parquets (never replaced by its original). A JSONL line that is not a record is moved to
`<output_jsonl>.bad` and counted; no good record is dropped. Outputs that are the input or each
other are refused.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any, NamedTuple

from corewarding.rewrite.engines import Engine, as_reply
from corewarding.rewrite.output import RewriteError, check_paths, load_done, load_questions, with_question, write_parquet
from corewarding.rewrite.prompt import Reply, build_request, read_rewrite

logger = logging.getLogger("rewrite_questions")


class BatchResult(NamedTuple):
    rewrites: dict[int, str]  # question position -> rewrite
    last_replies: dict[int, Reply]  # of the questions that failed
    last_reasons: dict[int, str]
    tries: dict[int, int]


def rewrite_batch(engine: Engine, questions: list[str], batch: list[int], max_retries: int, rejected: Counter) -> BatchResult:
    """Ask for the rewrites of `questions[i]` for i in `batch`, retrying the replies that give none
    up to `max_retries` times; every rejection is counted in `rejected` by reason."""
    result = BatchResult({}, {}, {}, {i: 0 for i in batch})
    pending = list(batch)
    for _ in range(1 + max_retries):
        if not pending:
            break
        replies = [as_reply(r) for r in engine.generate([build_request(questions[i]) for i in pending])]
        if len(replies) != len(pending):
            raise RuntimeError(f"engine returned {len(replies)} replies for {len(pending)} prompts")
        still = []
        for i, reply in zip(pending, replies):
            result.tries[i] += 1
            parsed = read_rewrite(reply.text, original=questions[i], finish_reason=reply.finish_reason)
            if parsed.rewrite is None:
                rejected[parsed.reason] += 1
                result.last_replies[i], result.last_reasons[i] = reply, parsed.reason
                still.append(i)
            else:
                result.rewrites[i] = parsed.rewrite
        pending = still
    return result


def rewrite_dataset(
    input_path: str | Path,
    output_jsonl: str | Path,
    output_parquet: str | Path,
    output_original_parquet: str | Path,
    engine: Engine,
    question_column: str = "prompt",
    batch_size: int = 128,
    max_retries: int = 2,
    limit: int | None = None,
    retry_failed: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Rewrite every question not yet in `output_jsonl`, then write both parquets. Returns counts:
    total, resumed (already in the JSONL), generated (this run), rewritten, failed, attempts,
    bad_lines (set aside from the JSONL) and rejected (replies without a rewrite, by reason)."""
    check_paths(input_path, output_jsonl, output_parquet, output_original_parquet)
    df, questions, keys = load_questions(input_path, question_column, limit)
    done, bad_lines = load_done(output_jsonl)
    _check_same_questions(done, dict(zip(keys, questions)), input_path, output_jsonl)
    todo = [
        i for i, key in enumerate(keys)
        if key not in done or (retry_failed and done[key].get("status") != "ok")
    ]
    resumed = len(keys) - len(todo)
    if resumed:
        logger.info("resuming: %d of %d questions already in %s", resumed, len(keys), output_jsonl)
    rejected: Counter = Counter()
    attempts = _rewrite_into(output_jsonl, engine, questions, keys, todo, done, batch_size, max_retries, rejected, progress)

    kept = [i for i, key in enumerate(keys) if done.get(key, {}).get("status") == "ok"]
    failed = [keys[i] for i, key in enumerate(keys) if done.get(key, {}).get("status") != "ok"]
    originals = df.iloc[kept].reset_index(drop=True)
    rephrased = originals.copy()
    rephrased[question_column] = [
        with_question(cell, done[keys[i]]["rewritten"]) for i, cell in zip(kept, originals[question_column].tolist())
    ]
    write_parquet(rephrased, output_parquet)
    write_parquet(originals, output_original_parquet)
    stats = {
        "total": len(keys), "resumed": resumed, "generated": len(todo), "rewritten": len(kept),
        "failed": len(failed), "attempts": attempts,
        "bad_lines": bad_lines, "rejected": dict(sorted(rejected.items())),
    }
    _report(stats, failed, max_retries, output_jsonl, output_parquet, output_original_parquet)
    return stats


def _check_same_questions(done: dict[int, dict[str, Any]], by_key: dict[int, str], input_path: str | Path,
                          output_jsonl: str | Path) -> None:
    """A JSONL record must hold the question of its index in the input (whitespace aside)."""
    for key, record in done.items():
        if key in by_key and " ".join(str(record.get("original", "")).split()) != " ".join(by_key[key].split()):
            raise RewriteError(
                f"{output_jsonl}: the record of index {key} has another question than {input_path}; "
                "this JSONL belongs to another input (use a new --output_jsonl)"
            )


def _rewrite_into(output_jsonl: str | Path, engine: Engine, questions: list[str], keys: list[int], todo: list[int],
                  done: dict[int, dict[str, Any]], batch_size: int, max_retries: int, rejected: Counter,
                  progress: bool) -> int:
    """Rewrite `questions[i]` for i in `todo` batch by batch, each batch's records appended to
    `output_jsonl` (on disk before the next batch starts) and into `done`; the model calls made."""
    from tqdm import tqdm

    attempts = 0
    Path(output_jsonl).parent.mkdir(parents=True, exist_ok=True)
    with open(output_jsonl, "a", encoding="utf-8") as sink, tqdm(total=len(todo), desc="rewriting", disable=not progress) as bar:
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            result = rewrite_batch(engine, questions, batch, max_retries, rejected)
            attempts += sum(result.tries.values())
            for i in batch:
                record = {"index": keys[i], "original": questions[i], "rewritten": result.rewrites.get(i),
                          "status": "ok" if i in result.rewrites else "failed", "attempts": result.tries[i]}
                if i not in result.rewrites:
                    record["last_output"] = result.last_replies[i].text[:2000]
                    record["last_reason"] = result.last_reasons[i]
                sink.write(json.dumps(record, ensure_ascii=False) + "\n")
                done[keys[i]] = record
            sink.flush()
            os.fsync(sink.fileno())
            bar.update(len(batch))
            bar.set_postfix(failed=len(batch) - len(result.rewrites))
    return attempts


def _report(stats: dict[str, Any], failed: list[int], max_retries: int, *paths: str | Path) -> None:
    message = (
        f"rewrite_questions: {stats['rewritten']} of {stats['total']} questions rewritten "
        f"({stats['resumed']} from an earlier run, {stats['generated']} this run, {stats['attempts']} model calls); "
        f"{stats['failed']} failed after {1 + max_retries} attempts and are left out of both parquets"
    )
    if stats["rejected"]:
        message += "; replies rejected: " + ", ".join(f"{k} {v}" for k, v in stats["rejected"].items())
    if stats["bad_lines"]:
        message += f"; {stats['bad_lines']} corrupt lines of {paths[0]} set aside in {paths[0]}.bad"
    if failed:
        message += f" (first failed indices: {failed[:10]})"
    (logger.warning if failed or stats["bad_lines"] else logger.info)(message)
    if not stats["rewritten"]:
        logger.warning("no successful rewrites: %s and %s are empty", paths[1], paths[2])
