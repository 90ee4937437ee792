"""Validation: the validation set's rollouts, scored by the ground-truth reward, summarized
(`val_metrics`) and recorded (`trainer.validation_data_dir`, `trainer.log_val_generations`)."""

from __future__ import annotations

import time
from typing import Any, Callable

from corewarding.batch import Batch
from corewarding.config import Config
from corewarding.data import RLDataset, to_batch
from corewarding.rewards.common import RewardFn
from corewarding.trainer.rollout_stats import prompt_text
from corewarding.trainer.tracking import Tracker, dump_rollouts
from corewarding.trainer.val_metrics import summarize_validation


def validate(dataset: RLDataset, generate: Callable[[Batch], Batch], reward_fn: RewardFn, config: Config, step: int,
             tracker: Tracker) -> dict[str, float]:
    """The metrics of `generate`'s rollouts of every prompt of `dataset` (batches of
    data.val_batch_size) under `reward_fn`; `step` names the records."""
    start = time.perf_counter()
    items = [dataset[i] for i in range(len(dataset))]
    size = config.data.val_batch_size or len(items)
    scores: list[float] = []
    questions: list[str] = []
    sources: list[str] = []
    given: list[str | None] = []
    lengths: list[float] = []
    records: list[dict[str, Any]] = []
    trainer_cfg = config.trainer
    shown = trainer_cfg.log_val_generations
    keep_records = bool(trainer_cfg.validation_data_dir) or shown > 0
    for lo in range(0, len(items), size):
        rollouts = generate(to_batch(items[lo:lo + size]))
        result = reward_fn(rollouts)
        answers = result.rows["answer"]
        scores += result.scores.tolist()
        questions += list(rollouts.rows["uid"])
        sources += list(rollouts.rows["data_source"])
        given += answers
        lengths += rollouts.tensors["response_mask"].float().sum(-1).tolist()
        if keep_records:
            records += [
                {"step": step, "data_source": rollouts.rows["data_source"][i],
                 "prompt": prompt_text(rollouts.rows, i), "response": rollouts.rows["response_text"][i],
                 "answer": answers[i], "ground_truth": rollouts.rows["ground_truth"][i], "reward": float(result.scores[i])}
                for i in range(len(rollouts))
            ]
    metrics = summarize_validation(sources, questions, scores, given, lengths,
                                   config.actor_rollout_ref.rollout.val_kwargs.n, config.reward_model.vote_equivalence)
    metrics["timing/val"] = time.perf_counter() - start
    if trainer_cfg.validation_data_dir:
        dump_rollouts(trainer_cfg.validation_data_dir, step, records)
    if shown > 0:
        tracker.log_generations(records[:shown], step)
    return metrics
