"""The fit loop: one GRPO step for all six methods, validation, checkpoints (DESIGN.md).

One training step (`Trainer.train_step`), in the order the code runs it:

1. a batch of B prompts (Co-rewarding-I: B pairs -> 2B prompt rows, originals then rephrased,
   sharing `pair_id`); every prompt row gets a fresh `uid`;
2. the workers sample `rollout.n` responses per prompt with the policy;
   Co-rewarding-II: every `update_interval` steps the teacher (the reference model) is moved
   towards the policy by EMA with weight a_k on the teacher (k = step - 1, as the release), then it
   samples `rollout.teacher_n` responses per prompt, with the uid of the policy's prompt so the
   reward can group them; with `data.use_aug` the two get different views of each question
   (`data.p`: the chance that the policy gets the rephrased one, 1.0 as the release);
3. old log-probs (+ per-token entropy, + self-certainty when the method rewards it) and, with the
   KL loss, reference log-probs;
4. rewards on the driver (grouped by uid / pair_id, never by position), GRPO advantages per uid;
5. the PPO update over mini/micro-batches on the workers; metrics.

Rows are reordered after generation so that every worker gets a similar number of tokens; nothing
downstream depends on row order.
"""

from __future__ import annotations

import logging
import math
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Hashable, Iterator

import torch
from omegaconf import DictConfig, OmegaConf

from corewarding.algos import ema_weight, grpo_advantages, kl_penalty, spread_over_tokens
from corewarding.batch import Batch
from corewarding.data import left_pad, user_content
from corewarding.rewards import extract_boxed_answer, get_reward_fn
from corewarding.rewards.functions import VIEWS
from corewarding.trainer import checkpoint as ckpt
from corewarding.trainer.config import Method
from corewarding.trainer.monitor import CollapseMonitor, CollapseRules, group_metrics
from corewarding.trainer.tracking import Tracker, dump_rollouts

logger = logging.getLogger(__name__)

VOTE_METHODS = ("majority_voting", "co_rewarding_i", "co_rewarding_ii")
# reward metric names (corewarding.rewards) -> logged names
REWARD_METRICS = {
    "score_mean": "reward/mean",
    "pseudo_label_acc": "reward/pseudo_label_acc",
    "answer_present": "reward/answer_present",
    "majority_ratio": "reward/majority_ratio",
    "gt_acc": "reward/gt_acc",
}


def _mean(values) -> float:
    values = list(values)
    return float(sum(values) / len(values)) if values else 0.0


def standard_error_over_questions(scores: list[float], questions: list[str]) -> float:
    """The standard error of the mean score, with questions as the unit (the samples of one question
    are not independent): std of the per-question means / sqrt(number of questions)."""
    per_question: dict[str, list[float]] = {}
    for score, question in zip(scores, questions):
        per_question.setdefault(question, []).append(score)
    means = [sum(v) / len(v) for v in per_question.values()]
    if len(means) < 2:
        return 0.0
    mean = sum(means) / len(means)
    return math.sqrt(sum((m - mean) ** 2 for m in means) / (len(means) - 1) / len(means))


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> float:
    mask = mask.to(torch.float32)
    return float((x.float() * mask).sum() / mask.sum().clamp(min=1.0))


def worker_error(exc: BaseException) -> str:
    """The one-line message of an exception a worker raised (Ray wraps it with a traceback)."""
    cause = getattr(exc, "cause", None)
    cause = cause if isinstance(cause, BaseException) else exc
    lines = str(cause).strip().splitlines()
    return ckpt.describe_error(cause) if isinstance(cause, OSError) or not lines else lines[-1]


def balanced_order(lengths: list[int], groups: list[Hashable], parts: int, kinds: list[int] | None = None) -> list[int]:
    """A permutation of the rows for `parts` workers (consecutive equal chunks): the rows of a group
    (one prompt's rollouts) stay together and in order, so that the workers can share their prompt;
    every worker gets as many groups (and, with `kinds` such as the view of each row, as many groups
    of each kind, in kind order) and a similar number of tokens: heaviest group first, each to the
    lightest worker that still has room. Without an equal split the order is left as it is."""
    units: dict[Hashable, list[int]] = {}
    for row, group in enumerate(groups):
        units.setdefault(group, []).append(row)
    by_kind: dict[int, list[list[int]]] = {}
    for rows in units.values():
        by_kind.setdefault(kinds[rows[0]] if kinds is not None else 0, []).append(rows)
    if parts <= 1 or any(len(kind_units) % parts for kind_units in by_kind.values()):
        return [row for rows in units.values() for row in rows]
    buckets: list[list[list[int]]] = [[] for _ in range(parts)]
    for kind in sorted(by_kind):
        kind_units, per_part = by_kind[kind], len(by_kind[kind]) // parts
        assigned: list[list[list[int]]] = [[] for _ in range(parts)]
        totals = [0] * parts
        for rows in sorted(kind_units, key=lambda u: (-sum(lengths[r] for r in u), u[0])):
            k = min((p for p in range(parts) if len(assigned[p]) < per_part), key=lambda p: (totals[p], p))
            assigned[k].append(rows)
            totals[k] += sum(lengths[r] for r in rows)
        for part, chosen in zip(buckets, assigned):
            part.extend(sorted(chosen, key=lambda u: u[0]))
    return [row for part in buckets for rows in part for row in rows]


class Trainer:
    def __init__(
        self,
        cfg: DictConfig,
        method: Method,
        tokenizer: Any,
        train_loader: Any,
        val_dataset: Any | None,
        workers: Any,
        tracker: Tracker,
        total_steps: int,
    ) -> None:
        self.cfg = cfg
        self.method = method
        self.tokenizer = tokenizer
        self.loader = train_loader
        self.val_dataset = val_dataset
        self.workers = workers
        self.tracker = tracker
        self.total_steps = int(total_steps)
        self.world_size = int(getattr(workers, "world_size", 1))
        self.global_step = 0
        self.history: list[dict[str, Any]] = []
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        gt_scorer = str(cfg.reward_model.get("gt_scorer") or "math_verify")
        options: dict[str, Any] = {"gt_scorer": gt_scorer}
        if method.name in VOTE_METHODS:
            options["equivalence"] = str(cfg.reward_model.vote_equivalence)
        extra = cfg.reward_model.get("reward_kwargs")
        if extra:
            options.update(OmegaConf.to_container(extra, resolve=True) if not isinstance(extra, dict) else extra)
        self.reward_fn = get_reward_fn(method.name, **options)
        self.val_reward_fn = get_reward_fn("gt", gt_scorer=gt_scorer)
        self.sa = cfg.actor_rollout_ref.ref.sliding_average
        actor = cfg.actor_rollout_ref.actor
        self.use_kl = bool(actor.use_kl_loss)
        on_policy = (bool(actor.on_policy_shortcut) and int(actor.ppo_epochs) == 1
                     and int(actor.ppo_mini_batch_size) == int(cfg.data.train_batch_size))
        self.policy_pass_needed = not on_policy or method.needs_token_stats
        self.per_view_loss = method.paired and str(actor.co_reward_loss) == "per_view"
        self.monitor = CollapseMonitor(CollapseRules(**OmegaConf.to_container(cfg.trainer.collapse_monitor)))
        self.last_ema_weight: float | None = None

    # ------------------------------------------------------------------ worker calls
    def _dispatch(self, method: str, batch: Batch, **kwargs: Any) -> Any:
        """`workers.dispatch` with the batch padded to a multiple of the worker count (copies of
        row 0, so the tensors keep their width); the rows produced for the padding are dropped."""
        n = len(batch)
        pad = (-n) % self.world_size
        if pad:
            batch = batch.select(list(range(n)) + [0] * pad)
        out = self.workers.dispatch(method, batch, **kwargs)
        if pad and isinstance(out, Batch) and len(out):
            per_row = len(out) // (n + pad)
            out = out.select(range(n * per_row))
        return out

    def _repad(self, batch: Batch) -> Batch:
        """Left-pad the prompt tensors of `batch` to the narrowest common width."""
        if "attention_mask" not in batch.tensors or "input_ids" not in batch.tensors:
            return batch
        mask = batch.tensors["attention_mask"]
        seqs = [row[m.bool()].tolist() for row, m in zip(batch.tensors["input_ids"], mask)]
        input_ids, attention_mask = left_pad(seqs, self.pad_token_id)
        tensors = dict(batch.tensors)
        tensors.update(input_ids=input_ids, attention_mask=attention_mask,
                       position_ids=(attention_mask.cumsum(dim=1) - 1).clamp(min=0))
        return Batch(tensors, batch.rows, batch.meta)

    def _generate(self, prompts: Batch, use_teacher: bool = False, validate: bool = False) -> Batch:
        out = self._dispatch("generate_sequences", self._repad(prompts), use_teacher=use_teacher, validate=validate)
        if "response_text" not in out.rows:
            out.rows["response_text"] = self._decode(out)
        return out

    def _decode(self, rollouts: Batch) -> list[str]:
        responses, mask = rollouts.tensors["responses"], rollouts.tensors["response_mask"]
        ids = [r[m.bool()].tolist() for r, m in zip(responses, mask)]
        return self.tokenizer.batch_decode(ids, skip_special_tokens=True)

    def _log_probs(self, rollouts: Batch, model: str, **kwargs: Any) -> Batch:
        """Per-token log-probs of the responses under the policy ("actor": `old_log_probs`, plus
        `entropy` / `self_certainty` when asked) or the reference model ("ref": `ref_log_probs`)."""
        return self._dispatch("compute_log_prob", rollouts, model=model, **kwargs)

    # ------------------------------------------------------------------ one step
    def _prepare_prompts(self, batch: Batch, step: int) -> tuple[Batch, Batch | None]:
        """Fresh uids; split the prompts of the policy from those of the teacher."""
        rows = dict(batch.rows)
        rows["prompt_id"] = rows.pop("uid", [str(i) for i in range(len(batch))])
        rows["uid"] = [f"{step}-{i}" for i in range(len(batch))]
        if "view" not in rows:
            rows["view"] = ["original"] * len(batch)
        batch = Batch(batch.tensors, rows, batch.meta)
        if not self.method.teacher:
            return batch, None
        if not batch.meta.get("paired"):
            return batch, batch
        # data.p: a swapped pair gives the policy its rephrased question and the teacher the original
        swapped = rows.get("views_swapped") or [False] * len(batch)
        for_policy = [(view == "rephrased") == bool(swap) for view, swap in zip(rows["view"], swapped)]
        policy = batch.select([i for i, mine in enumerate(for_policy) if mine])
        teacher = batch.select([i for i, mine in enumerate(for_policy) if not mine])
        uid_of_pair = dict(zip(policy.rows["pair_id"], policy.rows["uid"]))
        teacher.rows["uid"] = [uid_of_pair[p] for p in teacher.rows["pair_id"]]
        return self._repad(policy), self._repad(teacher)

    @contextmanager
    def _timer(self, timing: dict[str, float], name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        timing[name] = timing.get(name, 0.0) + time.perf_counter() - start

    def train_step(self, batch: Batch) -> dict[str, Any]:
        step = self.global_step + 1
        timing: dict[str, float] = {}
        metrics: dict[str, Any] = {"training/epoch": batch.meta.get("epoch", 0)}
        start = time.perf_counter()
        prompts, teacher_prompts = self._prepare_prompts(batch, step)

        # 2. rollouts of the policy; teacher update and teacher rollouts (Co-rewarding-II)
        with self._timer(timing, "gen"):
            rollouts = self._generate(prompts)
        self._absorb_worker_timing(rollouts, timing)
        teacher_rollouts = None
        if self.sa.enable and step % int(self.sa.update_interval) == 0:
            # k counts the steps before this one, as the release does: its first update uses alpha_start
            weight = ema_weight(step - 1, self.total_steps, float(self.sa.alpha_start), float(self.sa.alpha_end))
            with self._timer(timing, "teacher_update"):
                self.workers.call_all("update_teacher", weight)
            self.last_ema_weight = weight
        if self.last_ema_weight is not None:
            metrics["teacher/ema_weight"] = self.last_ema_weight
        if teacher_prompts is not None:
            with self._timer(timing, "teacher_gen"):
                teacher_rollouts = self._generate(teacher_prompts, use_teacher=True)
            self._absorb_worker_timing(teacher_rollouts, timing, prefix="teacher_")

        # balance: every worker gets whole groups and a similar number of tokens (rewards group by ids,
        # not position); Co-rewarding-I's per-view loss pairs each worker's micro-batches of the two
        # views, so every worker gets as many groups of each view
        lengths = rollouts.tensors["attention_mask"].sum(-1).tolist()
        if self.method.paired:
            rollouts.tensors["view_id"] = torch.tensor([VIEWS.index(v) for v in rollouts.rows["view"]])
        kinds = rollouts.tensors["view_id"].tolist() if self.per_view_loss else None
        rollouts = rollouts.select(balanced_order(lengths, rollouts.rows["uid"], self.world_size, kinds))

        # 3. old log-probs (+ entropy / self-certainty), unless the update is on-policy and the reward
        # needs neither (the update's own forward gives them then), and reference log-probs
        if self.policy_pass_needed:
            with self._timer(timing, "old_log_prob"):
                policy = self._log_probs(rollouts, "actor", calculate_entropy=True,
                                         calculate_self_certainty=self.method.self_certainty)
            rollouts.tensors.update(policy.tensors)
        if self.use_kl:
            with self._timer(timing, "ref"):
                rollouts.tensors.update(self._log_probs(rollouts, "ref").tensors)

        # 4. rewards and GRPO advantages (per uid)
        with self._timer(timing, "reward"):
            reward = self.reward_fn(rollouts, teacher=teacher_rollouts)
        with self._timer(timing, "adv"):
            scores = reward.scores.to(torch.float32)
            advantages = grpo_advantages(scores, rollouts.rows["uid"],
                                         norm_by_std=bool(self.cfg.algorithm.norm_adv_by_std_in_grpo))
            mask = rollouts.tensors["response_mask"]
            rollouts.tensors["scores"] = scores
            rollouts.tensors["advantages"] = spread_over_tokens(advantages, mask)
        for key, value in reward.metrics.items():
            metrics[REWARD_METRICS.get(key, f"reward/{key}")] = value
        metrics.update(group_metrics(reward.rows["answer"], rollouts.rows["uid"],
                                     rollouts.rows.get("ground_truth") or [None] * len(rollouts), scores.tolist()))

        # 5. PPO update (a mini-batch counts prompts; Co-rewarding-I: pairs, both views together)
        rollouts.meta["rollouts_per_prompt"] = int(self.cfg.actor_rollout_ref.rollout.n) * (2 if self.method.paired else 1)
        with self._timer(timing, "update_actor"):
            update = self.workers.dispatch("update_actor", rollouts)
        metrics.update(update.metrics)  # reduced over ranks by the workers
        rollouts.tensors.update(update.tokens.tensors)  # on-policy: the update's log-probs and entropy
        timing["step"] = time.perf_counter() - start

        metrics.update(self._batch_metrics(rollouts, teacher_rollouts, scores, advantages))
        tokens = int(rollouts.tensors["attention_mask"].sum())
        if teacher_rollouts is not None:
            tokens += int(teacher_rollouts.tensors["attention_mask"].sum())
        metrics["perf/total_tokens"] = tokens
        metrics["perf/tokens_per_s"] = tokens / max(timing["step"], 1e-9)
        metrics["perf/tokens_per_s_per_worker"] = metrics["perf/tokens_per_s"] / self.world_size
        metrics.update({f"timing/{k}": v for k, v in timing.items()})
        if self.cfg.trainer.rollout_data_dir:
            dump_rollouts(self.cfg.trainer.rollout_data_dir, step,
                          self._rollout_records(step, rollouts, reward, scores, advantages, teacher_rollouts))
        self.monitor.update(step, metrics)
        self.global_step = step
        return metrics

    @staticmethod
    def _absorb_worker_timing(rollouts: Batch, timing: dict[str, float], prefix: str = "") -> None:
        """Timings the workers put in meta (timing/weight_sync, timing/generate_engine)."""
        for key, value in rollouts.meta.items():
            if key.startswith("timing/") and isinstance(value, (int, float)):
                name = prefix + key[len("timing/"):]
                timing[name] = timing.get(name, 0.0) + float(value)

    def _batch_metrics(self, rollouts: Batch, teacher: Batch | None, scores, advantages) -> dict[str, float]:
        mask = rollouts.tensors["response_mask"].float()
        lengths = mask.sum(-1)
        max_len = int(self.cfg.data.max_response_length)
        prompt_lengths = rollouts.tensors["attention_mask"].sum(-1).float() - lengths
        metrics = {
            "response_length/mean": float(lengths.mean()),
            "response_length/max": float(lengths.max()),
            "response_length/min": float(lengths.min()),
            "response_length/clip_ratio": float((lengths >= max_len).float().mean()),
            "prompt_length/mean": float(prompt_lengths.mean()),
            "critic/score/mean": float(scores.mean()),
            "critic/advantages/mean": float(advantages.mean()),
            "critic/advantages/max": float(advantages.max()),
            "critic/advantages/min": float(advantages.min()),
        }
        if "entropy" in rollouts.tensors:
            metrics["actor/entropy"] = _masked_mean(rollouts.tensors["entropy"], mask)
        if "self_certainty" in rollouts.tensors:
            metrics["actor/self_certainty"] = _masked_mean(rollouts.tensors["self_certainty"], mask)
        if "rollout_log_probs" in rollouts.tensors:  # vLLM's sampler vs the trainer's forward
            diff = (rollouts.tensors["rollout_log_probs"] - rollouts.tensors["old_log_probs"]).abs()
            metrics["rollout/log_prob_diff_mean"] = _masked_mean(diff, mask)
            metrics["rollout/log_prob_diff_max"] = float((diff * mask).max())
        if "ref_log_probs" in rollouts.tensors:
            kl = kl_penalty(rollouts.tensors["old_log_probs"].float(), rollouts.tensors["ref_log_probs"].float(),
                            str(self.cfg.actor_rollout_ref.actor.kl_loss_type))
            metrics["actor/ref_kl"] = _masked_mean(kl, mask)
        if teacher is not None:
            t_len = teacher.tensors["response_mask"].float().sum(-1)
            answers = [extract_boxed_answer(t) for t in teacher.rows["response_text"]]
            metrics["teacher/response_length/mean"] = float(t_len.mean())
            metrics["teacher/answer_present"] = _mean(a is not None for a in answers)
        return metrics

    def _rollout_records(self, step, rollouts, reward, scores, advantages, teacher) -> list[dict[str, Any]]:
        rows = rollouts.rows
        answers = reward.rows.get("answer") or [None] * len(rollouts)
        labels = reward.rows.get("pseudo_label") or [None] * len(rollouts)
        records = []
        for i in range(len(rollouts)):
            records.append({
                "step": step, "role": "policy", "uid": rows["uid"][i], "view": rows.get("view", [None] * len(rollouts))[i],
                "sample_index": rows.get("sample_index", [None] * len(rollouts))[i],
                "pair_id": rows.get("pair_id", [None] * len(rollouts))[i], "data_source": rows.get("data_source", [None] * len(rollouts))[i],
                "prompt": self._prompt_text(rows, i), "response": rows["response_text"][i],
                "answer": answers[i], "pseudo_label": labels[i], "ground_truth": rows.get("ground_truth", [None] * len(rollouts))[i],
                "reward": float(scores[i]), "advantage": float(advantages[i]),
            })
        if teacher is not None:
            trows = teacher.rows
            for i in range(len(teacher)):
                records.append({
                    "step": step, "role": "teacher", "uid": trows["uid"][i], "view": trows.get("view", [None] * len(teacher))[i],
                    "sample_index": trows.get("sample_index", [None] * len(teacher))[i],
                    "prompt": self._prompt_text(trows, i), "response": trows["response_text"][i],
                    "answer": extract_boxed_answer(trows["response_text"][i]),
                })
        return records

    @staticmethod
    def _prompt_text(rows: dict[str, list], i: int) -> str | None:
        messages = rows.get("prompt_messages")
        if not messages:
            return None
        try:
            return user_content(messages[i])
        except Exception:  # noqa: BLE001 - a dump must not stop training
            return str(messages[i])

    # ------------------------------------------------------------------ validation
    def validate(self) -> dict[str, float]:
        """Validation: `rollout.val_kwargs` sampling as verl reads it (ours: temperature 0.8; the
        release: greedy), the GT reward with `reward_model.gt_scorer`; `val/<data_source>/acc` and
        `val/acc` (mean over all rollouts, val_kwargs.n per prompt)."""
        if self.val_dataset is None:
            return {}
        from corewarding.data import to_batch

        start = time.perf_counter()
        items = [self.val_dataset[i] for i in range(len(self.val_dataset))]
        size = int(self.cfg.data.val_batch_size or len(items))
        scores: list[float] = []
        questions: list[str] = []
        sources: list[str] = []
        present: list[bool] = []
        lengths: list[float] = []
        records: list[dict[str, Any]] = []
        shown = int(self.cfg.trainer.get("log_val_generations") or 0)
        keep_records = bool(self.cfg.trainer.get("validation_data_dir")) or shown > 0
        for lo in range(0, len(items), size):
            prompts = to_batch(items[lo:lo + size], self.pad_token_id)
            prompts.rows["prompt_id"] = prompts.rows["uid"]
            rollouts = self._generate(prompts, validate=True)
            result = self.val_reward_fn(rollouts)
            answers = result.rows.get("answer") or [None] * len(rollouts)
            scores += result.scores.tolist()
            questions += list(rollouts.rows["uid"])
            sources += list(rollouts.rows["data_source"])
            present += [a is not None for a in answers]
            lengths += rollouts.tensors["response_mask"].float().sum(-1).tolist()
            if keep_records:
                records += [
                    {"step": self.global_step, "data_source": rollouts.rows["data_source"][i],
                     "prompt": self._prompt_text(rollouts.rows, i), "response": rollouts.rows["response_text"][i],
                     "answer": answers[i], "ground_truth": rollouts.rows["ground_truth"][i], "reward": float(result.scores[i])}
                    for i in range(len(rollouts))
                ]
        metrics: dict[str, float] = {}
        for source in sorted(set(sources)):
            metrics[f"val/{source}/acc"] = _mean(s for s, d in zip(scores, sources) if d == source)
        metrics["val/acc"] = _mean(scores)
        metrics["val/acc_se"] = standard_error_over_questions(scores, questions)
        metrics["val/answer_present"] = _mean(present)
        metrics["val/response_length/mean"] = _mean(lengths)
        metrics["timing/val"] = time.perf_counter() - start
        if self.cfg.trainer.get("validation_data_dir"):
            dump_rollouts(self.cfg.trainer.validation_data_dir, self.global_step, records)
        if shown > 0:
            self.tracker.log_generations(records[:shown], self.global_step)
        return metrics

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> Path:
        """Workers write into global_step_<N>.tmp, the driver commits it. A failed write anywhere (a
        full disk) removes the .tmp folder and raises one `CheckpointError` line naming the
        checkpoint that is still good."""
        root = self.cfg.trainer.default_local_dir
        try:
            tmp = ckpt.begin(root, self.global_step)
        except OSError as exc:
            raise ckpt.save_failed(root, self.global_step, exc) from exc
        try:
            self.workers.call_all("save_checkpoint", str(tmp))
        except Exception as exc:  # noqa: BLE001 - Ray wraps the workers' exception
            shutil.rmtree(tmp, ignore_errors=True)
            raise ckpt.save_failed(root, self.global_step, worker_error(exc)) from exc
        state = {
            "dataloader": self.loader.state_dict(),
            "total_training_steps": self.total_steps,
            "method": self.method.name,
            "world_size": self.world_size,
            "last_ema_weight": self.last_ema_weight,
            "collapse_monitor": self.monitor.state_dict(),
        }
        keep = self.cfg.trainer.get("max_actor_ckpt_to_keep")
        return ckpt.commit(root, self.global_step, tmp, state, keep=int(keep) if keep else None)

    def load_checkpoint(self, path: Path, state: dict[str, Any]) -> None:
        if state.get("method") not in (None, self.method.name):
            raise ckpt.CheckpointError(
                f"checkpoint {path} was written by method {state['method']!r}, this run is {self.method.name!r}"
            )
        if int(state.get("world_size", self.world_size)) != self.world_size:
            raise ckpt.CheckpointError(
                f"checkpoint {path} has {state['world_size']} worker shards, this run has {self.world_size} workers"
            )
        try:  # first: it is cheap and says clearly when the data or batch size changed
            self.loader.load_state_dict(state["dataloader"])
        except ValueError as exc:
            raise ckpt.CheckpointError(f"checkpoint {path}: {exc}") from exc
        try:
            self.workers.call_all("load_checkpoint", str(path))
        except Exception as exc:  # noqa: BLE001 - Ray wraps the worker's exception
            raise ckpt.CheckpointError(f"checkpoint {path} cannot be loaded by the workers ({worker_error(exc)[:300]}); "
                                       "delete it or resume from an earlier one") from exc
        self.global_step = int(state["global_step"])
        self.last_ema_weight = state.get("last_ema_weight")
        self.monitor.load_state_dict(state.get("collapse_monitor") or {})

    # ------------------------------------------------------------------ the loop
    def fit(self, progress: bool = True) -> list[dict[str, Any]]:
        trainer_cfg = self.cfg.trainer
        save_freq, test_freq = int(trainer_cfg.save_freq or -1), int(trainer_cfg.test_freq or -1)
        if self.global_step == 0 and trainer_cfg.val_before_train and self.val_dataset is not None:
            val = self.validate()
            self._log(val, self.global_step)
            if trainer_cfg.get("val_only"):
                return self.history
        # trainer.max_steps_this_run: stop after a checkpoint (whatever save_freq says) once this
        # process has trained N steps, e.g. to fit a job's time slot; the next run resumes there.
        stop_after = trainer_cfg.get("max_steps_this_run")
        stop_at = self.total_steps if not stop_after else min(self.total_steps, self.global_step + int(stop_after))
        bar, printer = None, self.tracker.printer
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=self.total_steps, initial=self.global_step, desc="training", unit="step",
                       file=sys.stderr, dynamic_ncols=True, leave=False)
            self.tracker.printer = lambda line: bar.write(line, file=sys.stdout)
        try:
            while self.global_step < stop_at:
                for batch in self.loader:
                    metrics = self.train_step(batch)
                    last = self.global_step >= self.total_steps
                    stopping = self.global_step >= stop_at
                    if self.val_dataset is not None and test_freq > 0 and (self.global_step % test_freq == 0 or last):
                        metrics.update(self.validate())
                    periodic = save_freq > 0 and (self.global_step % save_freq == 0 or stopping)
                    if periodic or (stop_after and stopping):
                        started = time.perf_counter()
                        self.save_checkpoint()
                        metrics["timing/save_checkpoint"] = time.perf_counter() - started
                    bad = [k for k, v in metrics.items() if k.startswith("actor/") and isinstance(v, float) and not math.isfinite(v)]
                    if bad:
                        logger.warning("step %d: non-finite metrics %s", self.global_step, bad)
                    self._log(metrics, self.global_step)
                    if bar is not None:
                        bar.update(1)
                    if stopping:
                        break
        finally:
            self.tracker.printer = printer
            if bar is not None:
                bar.close()
        return self.history

    def _log(self, metrics: dict[str, Any], step: int) -> None:
        self.history.append({"step": step, **metrics})
        self.tracker.log(metrics, step)

