"""The fit loop and one GRPO step for every method (docs/architecture.md); the loop validates
(`validation.py`) and saves checkpoints (`save_resume.py`) on its schedule.

One training step (`Trainer.train_step`), in the order the code runs it:

1. a batch of B prompts (Co-rewarding-I and -III: B pairs -> 2B prompt rows, originals then rephrased,
   sharing `pair_id`); every prompt row gets a fresh `uid`;
2. the workers sample `rollout.n` responses per prompt with the policy;
   Co-rewarding-II: every `update_interval` steps the teacher (the reference model) is moved
   towards the policy by EMA with weight a_k on the teacher (k = step - 1, as the release), then it
   samples `rollout.teacher_n` responses per prompt on the rows the loader marked for it (the
   policy's own prompts, same uids); with `data.use_aug` the two get different views of each
   question (`data.p`: the chance that the policy gets the rephrased one, 1.0 as the release) and
   the reward finds the teacher's vote by pair and view. Co-rewarding-III: both answer both views;
3. old log-probs (+ per-token entropy / self-certainty when the reward reads them) unless the update
   is on-policy, and, with the KL loss, reference log-probs;
4. rewards on the driver (grouped by uid / pair_id, never by position), GRPO advantages per uid,
   the collapse monitor's metrics;
5. the PPO update over mini/micro-batches on the workers; metrics.

With `algorithm.filter_groups.enable` (DAPO's dynamic sampling, docs/method.md) steps 1-2 repeat
over further batches of `data.gen_batch_size` prompts, each scored at once, until
`data.train_batch_size` groups whose score varies are kept; steps 3-5 then run on exactly those.

Rows are reordered after generation so that every worker gets whole groups (two trained views: whole
pairs, originals then their twins) and a similar number of tokens; the rewards never depend on row order.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch

from corewarding.algos import ema_weight
from corewarding.batch import Batch
from corewarding.config import Config
from corewarding.config.schema import ROLLOUT_DIRS
from corewarding.data import DataError
from corewarding.methods import resolve_method
from corewarding.rewards.common import RewardOutput
from corewarding.roles import VIEWS
from corewarding.trainer import checkpoint as ckpt
from corewarding.trainer.dynamic_sampling import Kept, Tally, concat_rollouts
from corewarding.trainer.monitor import CollapseMonitor
from corewarding.trainer.preemption import Preempted, PreemptionWatch
from corewarding.trainer.rollout_stats import balanced_order, batch_metrics, rollout_records, throughput_metrics
from corewarding.trainer.save_resume import resume, save_step
from corewarding.trainer.scoring import first_of_each_group, score_rollouts
from corewarding.trainer.tracking import Tracker, dump_step_rollouts, progress_bar
from corewarding.trainer.validation import validate
from corewarding.workers.worker_api import WorkerGroup

logger = logging.getLogger(__name__)

class Trainer:
    def __init__(self, config: Config, tokenizer: Any, train_loader: Any, val_dataset: Any | None,
                 workers: WorkerGroup, tracker: Tracker, total_steps: int) -> None:
        self.config = config
        self.method = config.method
        self.tokenizer = tokenizer
        self.loader = train_loader
        self.val_dataset = val_dataset
        self.workers = workers
        self.tracker = tracker
        self.total_steps = total_steps
        self.world_size = workers.world_size
        self.global_step = 0
        self.history: list[dict[str, Any]] = []
        rewards = config.reward_model
        self.reward_fn = self.method.reward_fn(**self.method.options(rewards.gt_scorer, rewards.vote_equivalence,
                                                                     rewards.reward_kwargs))
        self.val_reward_fn = resolve_method("gt").reward_fn(gt_scorer=rewards.gt_scorer)
        actor = config.actor_rollout_ref.actor
        on_policy = (actor.on_policy_shortcut and actor.ppo_epochs == 1
                     and actor.ppo_mini_batch_size == config.data.train_batch_size)
        self.policy_pass_needed = not on_policy or bool(self.method.token_stats)
        self.roles = config.roles
        self.monitor = CollapseMonitor(config.trainer.collapse_monitor)
        self.last_ema_weight: float | None = None
        self.saved_step = 0  # the step of the newest checkpoint this run saved or resumed from (0: none needed)
        self.saved_path: Path | None = None  # ... and its folder
        self.preemption: PreemptionWatch | None = None  # set by fit

    # ------------------------------------------------------------------ worker calls
    def _generate(self, prompts: Batch, role: str, timing: dict[str, float]) -> Batch:
        """`role`'s rollouts of the prompts (policy, teacher or validation), timed into `timing`.
        The prompts are padded to a multiple of the worker count with copies of prompt 0, whose
        rollouts are dropped again (a validation set need not divide)."""
        n = len(prompts)
        pad = (-n) % self.world_size
        prefix = "teacher_" if role == "teacher" else ""
        with self._timer(timing, f"{prefix}gen"):
            width = max(len(p) for p in prompts.rows["prompt_ids"])
            generated = self.workers.generate_sequences(prompts.select(list(range(n)) + [0] * pad), role=role,
                                                        prompt_width=width)
        timing[f"{prefix}weight_sync"] = timing.get(f"{prefix}weight_sync", 0.0) + generated.weight_sync_s
        timing[f"{prefix}generate_engine"] = timing.get(f"{prefix}generate_engine", 0.0) + generated.generate_s
        rollouts = generated.rollouts
        return rollouts.select(range(n * len(rollouts) // (n + pad))) if pad else rollouts

    @contextmanager
    def _timer(self, timing: dict[str, float], name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        timing[name] = timing.get(name, 0.0) + time.perf_counter() - start

    # ------------------------------------------------------------------ one step
    def _prepare_prompts(self, batch: Batch, step: int, gen: int = 0) -> tuple[Batch, Batch | None]:
        """Fresh uids (one per prompt row); the prompts of the policy and those of the teacher, as the
        loader marked them (`for_policy` / `for_teacher`, `corewarding.roles`). `gen`: the step's
        generation batch (dynamic sampling); a later one gets its own uids and pair ids, as the same
        question can come twice in one step when its prompts run into the next epoch."""
        rows = dict(batch.rows)
        rows["uid"] = [f"{step}-{i}" if not gen else f"{step}-{gen}-{i}" for i in range(len(batch))]
        if gen and "pair_id" in rows:
            rows["pair_id"] = [f"{p}#{gen}" for p in rows["pair_id"]]
        rows.setdefault("view", ["original"] * len(batch))
        batch = Batch(batch.tensors, rows)
        if not self.roles.teacher:
            return batch, None
        if "for_policy" not in rows:  # one view: the teacher answers the policy's questions
            return batch, batch
        policy = batch.select([i for i, mine in enumerate(rows["for_policy"]) if mine])
        teacher = batch.select([i for i, its in enumerate(rows["for_teacher"]) if its])
        return policy, teacher

    def _update_teacher(self, step: int, timing: dict[str, float]) -> None:
        """Co-rewarding-II: every `update_interval` steps, teacher <- a_k teacher + (1 - a_k) policy."""
        sa = self.config.actor_rollout_ref.ref.sliding_average
        if not sa.enable or step % sa.update_interval:
            return
        # k counts the steps before this one, as the release does: its first update uses alpha_start
        weight = ema_weight(step - 1, self.total_steps, sa.alpha_start, sa.alpha_end)
        with self._timer(timing, "teacher_update"):
            self.workers.update_teacher(weight)
        self.last_ema_weight = weight

    def _rollouts(self, batch: Batch, step: int, gen: int, timing: dict[str, float],
                  with_teacher: bool = True) -> tuple[Batch, Batch | None, Batch | None]:
        """(policy rollouts, the teacher's prompts, the teacher's rollouts) of one batch of prompts;
        the EMA update (Co-rewarding-II and -III) comes once per step, before the teacher's first
        rollouts, which cover every view the teacher answers in one call."""
        prompts, teacher_prompts = self._prepare_prompts(batch, step, gen)
        rollouts = self._generate(prompts, "policy", timing)
        if teacher_prompts is None:
            return rollouts, None, None
        if gen == 0:
            self._update_teacher(step, timing)
        teacher = self._generate(teacher_prompts, "teacher", timing) if with_teacher else None
        return rollouts, teacher_prompts, teacher

    def _balanced(self, rollouts: Batch, voted: RewardOutput | None = None) -> tuple[Batch, RewardOutput | None]:
        """Whole groups to each worker, similar token counts (rewards group by ids, not position), and
        a reward already computed in the same order. With two trained views, whole pairs: a worker's
        original groups, then their twins in the same order, so that every mini-batch trains both views
        of its pairs (`mini_batch_rows`) and the per-view loss has as many groups of each view on each."""
        kinds = pairs = None
        if self.roles.trained_views == 2:
            rollouts.tensors["view_id"] = torch.tensor([VIEWS.index(v) for v in rollouts.rows["view"]])
            kinds, pairs = rollouts.tensors["view_id"].tolist(), rollouts.rows["pair_id"]
        lengths = rollouts.tensors["attention_mask"].sum(-1).tolist()
        order = balanced_order(lengths, rollouts.rows["uid"], self.world_size, kinds, pairs)
        return rollouts.select(order), voted.select(order) if voted is not None else None

    def _ttrl_vote(self, rollouts: Batch, timing: dict[str, float]) -> tuple[Batch, RewardOutput | None]:
        """TTRL (`ttrl.enable`): the reward of each rollout from the vote over all N of its prompt's,
        then the first n of each prompt kept for the update; without TTRL, the rollouts as they are."""
        if not self.config.ttrl.enable:
            return rollouts, None
        with self._timer(timing, "reward"):
            voted = self.reward_fn(rollouts, teacher=None)
        keep = first_of_each_group(rollouts.rows["uid"], self.config.ttrl.n_samples_per_prompt)
        return rollouts.select(keep), voted.select(keep)

    def _score(self, rollouts: Batch, teacher: Batch | None, timing: dict[str, float], metrics: dict[str, Any],
               voted: RewardOutput | None = None) -> tuple[RewardOutput, torch.Tensor, torch.Tensor]:
        """(the reward (`voted` when TTRL computed it already), the training scores, the GRPO
        advantages per uid), as `score_rollouts` puts them into `rollouts` and `metrics`."""
        with self._timer(timing, "reward"):
            reward = voted if voted is not None else self.reward_fn(rollouts, teacher=teacher)
        with self._timer(timing, "adv"):
            scores, advantages = score_rollouts(reward, rollouts, self.config, metrics)
        return reward, scores, advantages

    def _policy_pass(self, rollouts: Batch, timing: dict[str, float]) -> None:
        """Old log-probs (+ entropy / self-certainty for the rewards that read them) into `rollouts`."""
        with self._timer(timing, "old_log_prob"):
            policy = self.workers.compute_log_prob(rollouts, model="actor", with_entropy=True,
                                                   with_self_certainty="self_certainty" in self.method.token_stats)
        rollouts.tensors.update(policy.tensors)

    def _filter_values(self, rollouts: Batch, teacher: Batch | None, timing: dict[str, float]) -> list[float]:
        """Per rollout, the value algorithm.filter_groups.metric names: the reward (score; verl's
        seq_reward / seq_final_reward are the same here: no KL in the reward) or GT accuracy (acc)."""
        with self._timer(timing, "filter_groups"):
            if self.config.algorithm.filter_groups.metric == "acc":
                return self.val_reward_fn(rollouts).scores.tolist()
            return self.reward_fn(rollouts, teacher=teacher).scores.tolist()

    def _dynamic_sample(self, batch: Batch, more: Iterator[Batch], step: int, timing: dict[str, float],
                        tally: Tally) -> tuple[Batch, Batch | None]:
        """DAPO's dynamic sampling (algorithm.filter_groups): generation batches of data.gen_batch_size
        prompts until data.train_batch_size units with a spread are kept (trimmed to exactly that, in
        generation order, as verl), or a clear error at max_num_gen_batches. Co-rewarding-II with the
        acc metric samples the teacher for the kept prompts only; the score metric is its reward,
        which needs the teacher's rollouts of every prompt first."""
        fg, target = self.config.algorithm.filter_groups, self.config.data.train_batch_size
        by_reward = fg.metric != "acc"  # the reward needs the teacher's rollouts and the token statistics first
        kept = Kept(target, "pair_id" if self.roles.pairs else "uid", tally)
        while True:
            rollouts, teacher_prompts, teacher = self._rollouts(batch, step, tally.gen_batches, timing, by_reward)
            tally.gen_batches += 1
            if self.method.token_stats and by_reward:
                rollouts, _ = self._balanced(rollouts)
                self._policy_pass(rollouts, timing)  # the reward reads the policy's token statistics
            if kept.add(self._filter_values(rollouts, teacher, timing), rollouts, teacher, teacher_prompts):
                break
            if fg.limit is not None and tally.gen_batches >= fg.limit:
                raise DataError(
                    f"step {step}: algorithm.filter_groups kept {kept.have} of the data.train_batch_size={target} groups "
                    f"after max_num_gen_batches={fg.limit} generation batches (the rest had one {fg.metric} for all "
                    "their rollouts): raise algorithm.filter_groups.max_num_gen_batches (0: no limit) or data.gen_batch_size"
                )
            batch = next(more)
        pad = self.tokenizer.pad_token_id
        teacher_rollouts = concat_rollouts(kept.teacher, pad) if kept.teacher else None
        if kept.teacher_prompts:
            teacher_rollouts = self._generate(Batch.concat(kept.teacher_prompts), "teacher", timing)
        return concat_rollouts(kept.rollouts, pad), teacher_rollouts

    def _batch_stream(self) -> Iterator[Batch]:
        """The loader's batches, epoch after epoch."""
        while True:
            yield from self.loader

    def train_step(self, batch: Batch, more: Iterable[Batch] | None = None) -> dict[str, Any]:
        """One step on `batch`; dynamic sampling takes further batches from `more` (by default the
        loader, continued across epochs)."""
        step = self.global_step + 1
        timing: dict[str, float] = {}
        start = time.perf_counter()

        # 2. rollouts of the policy; teacher update and teacher rollouts (Co-rewarding-II)
        tally = Tally()
        if self.config.algorithm.filter_groups.enable:
            stream = iter(more) if more is not None else self._batch_stream()
            rollouts, teacher_rollouts = self._dynamic_sample(batch, stream, step, timing, tally)
        else:
            rollouts, _, teacher_rollouts = self._rollouts(batch, step, 0, timing)
        metrics: dict[str, Any] = {"training/epoch": self.loader.batch_epoch}
        if self.config.algorithm.filter_groups.enable:
            metrics.update(tally.metrics())
        if self.last_ema_weight is not None:
            metrics["teacher/ema_weight"] = self.last_ema_weight

        rollouts, voted = self._balanced(*self._ttrl_vote(rollouts, timing))

        # 3. old log-probs (+ entropy / self-certainty) unless on-policy (or dynamic sampling has
        # them already), reference log-probs
        if self.policy_pass_needed and "old_log_probs" not in rollouts.tensors:
            self._policy_pass(rollouts, timing)
        if self.config.actor_rollout_ref.actor.use_kl_loss:
            with self._timer(timing, "ref"):
                rollouts.tensors.update(self.workers.compute_log_prob(rollouts, model="ref").tensors)

        # 4. rewards, GRPO advantages (per uid), the collapse monitor's group metrics
        reward, scores, advantages = self._score(rollouts, teacher_rollouts, timing, metrics, voted)

        # 5. PPO update (a mini-batch counts prompts; both views trained: pairs, both views together)
        per_prompt = self.config.trained_per_prompt * self.roles.trained_views
        with self._timer(timing, "update_actor"):
            update = self.workers.update_actor(rollouts, rollouts_per_prompt=per_prompt)
        metrics.update(update.metrics)  # reduced over ranks by the workers
        rollouts.tensors.update(update.tokens.tensors)  # on-policy: the update's log-probs and entropy
        timing["step"] = time.perf_counter() - start

        metrics.update(batch_metrics(rollouts, teacher_rollouts, scores, advantages,
                                     self.config.data.max_response_length, self.config.actor_rollout_ref.actor.kl_loss_type))
        metrics.update(throughput_metrics(rollouts, teacher_rollouts, timing["step"], self.world_size))
        metrics.update({f"timing/{k}": v for k, v in timing.items()})
        folders = {key: getattr(self.config.trainer, key) for key in ROLLOUT_DIRS}
        if any(folders.values()):
            dump_step_rollouts(folders, step, rollout_records(step, rollouts, reward, scores, advantages, teacher_rollouts))
        self.monitor.update(step, metrics)
        self.global_step = step
        return metrics

    # ------------------------------------------------------------------ validation
    def validate(self) -> dict[str, float]:
        """Validation: `rollout.val_kwargs` sampling as verl reads it (ours: temperature 0.8; the
        release: greedy), the GT reward with `reward_model.gt_scorer`; `val/<data_source>/acc`,
        `val/acc` (mean over all rollouts, val_kwargs.n per prompt) and its standard error; with
        val_kwargs.n > 1 also verl's mean@N, best@n, worst@n and maj@n per data source
        (`corewarding.trainer.val_metrics`)."""
        if self.val_dataset is None:
            return {}
        return validate(self.val_dataset, lambda prompts: self._generate(prompts, "validation", {}), self.val_reward_fn,
                        self.config, self.global_step, self.tracker)

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> Path:
        """This step's checkpoint: the workers' files and the driver's state (`save_resume.save_step`)."""
        state = {"dataloader": self.loader.state_dict(), "total_training_steps": self.total_steps,
                 "method": self.method.name, "world_size": self.world_size, "last_ema_weight": self.last_ema_weight,
                 "collapse_monitor": self.monitor.state_dict()}
        publishing = self.preemption.publishing() if self.preemption is not None else contextlib.nullcontext()
        trainer_cfg = self.config.trainer
        saved = save_step(self.workers, trainer_cfg.default_local_dir, self.global_step, state,
                          trainer_cfg.max_actor_ckpt_to_keep, publishing)
        self.saved_step, self.saved_path = self.global_step, saved
        return saved

    def load_checkpoint(self, path: Path, state: dict[str, Any]) -> None:
        """Resume from the checkpoint at `path`, whose driver state is `state` (`save_resume.resume`)."""
        resume(self.workers, path, state, self.method.name, self.world_size, self.loader,
               self.config.data.resume_allow_sampling_change)
        self.global_step = self.saved_step = int(state["global_step"])
        self.saved_path = Path(path)
        self.last_ema_weight = state.get("last_ema_weight")
        self.monitor.load_state_dict(state.get("collapse_monitor") or {})

    # ------------------------------------------------------------------ the loop
    def _preempted(self) -> Preempted:
        """The exception that ends a preempted run: the signal, the last trained step, the checkpoint."""
        received = self.preemption.received.name if self.preemption and self.preemption.received else "a signal"
        path = self.saved_path
        where = f"last trained step {self.global_step}, checkpoint {path}" if path else "no step trained yet, no checkpoint"
        return Preempted(f"{received}: {where}", path)

    def _save_and_time(self, metrics: dict[str, Any]) -> None:
        started = time.perf_counter()
        saved = self.save_checkpoint()
        metrics["timing/save_checkpoint"] = time.perf_counter() - started
        # what a save costs on disk (x saves kept: trainer.max_actor_ckpt_to_keep)
        metrics["checkpoint/size_gb"] = ckpt.folder_bytes(saved) / 1e9

    def _done(self, stop_at: int) -> bool:
        """The loop's one decision point, after a step and its logging (and before the first step):
        a preemption signal received at any time since the last decision saves the last trained
        step (unless it is saved already) and raises `Preempted`, or ends the run quietly when it
        has reached its planned stop; otherwise the run is done at `stop_at`."""
        if self.preemption is None or self.preemption.received is None:
            return self.global_step >= stop_at
        if self.global_step > self.saved_step:
            saved: dict[str, Any] = {}
            self._save_and_time(saved)
            logger.info("step %d saved on preemption in %.1f s", self.global_step, saved["timing/save_checkpoint"])
        if self.global_step >= stop_at:  # the planned stop came with the signal: this run is complete
            return True
        raise self._preempted()

    def fit(self, progress: bool = True, preemption: PreemptionWatch | None = None) -> list[dict[str, Any]]:
        """Train until the last step (or `trainer.max_steps_this_run`). After a `preemption` signal:
        finish the step, log it, save it, raise `Preempted` (`_done`)."""
        self.preemption = preemption
        trainer_cfg = self.config.trainer
        save_freq, test_freq = trainer_cfg.save_freq or -1, trainer_cfg.test_freq or -1
        # a signal received in start-up goes straight to `_done`, without the pre-training validation
        # (a val_only run too: it is requeued)
        signalled = preemption is not None and preemption.received is not None
        if self.global_step == 0 and trainer_cfg.val_before_train and self.val_dataset is not None and not signalled:
            base = self.validate()
            self.monitor.validation(self.global_step, base)
            self._log(base, self.global_step)
            if trainer_cfg.val_only:
                return self.history
        # trainer.max_steps_this_run: stop after a checkpoint (whatever save_freq says) once this
        # process has trained N steps, e.g. to fit a job's time slot; the next run resumes there.
        stop_after = trainer_cfg.max_steps_this_run
        stop_at = self.total_steps if not stop_after else min(self.total_steps, self.global_step + stop_after)
        with progress_bar(self.tracker, self.total_steps, self.global_step, progress) as advance:
            batches = self._batch_stream()
            while not self._done(stop_at):
                metrics = self.train_step(next(batches), batches)
                last = self.global_step >= self.total_steps
                stopping = self.global_step >= stop_at
                if self.val_dataset is not None and test_freq > 0 and (self.global_step % test_freq == 0 or last):
                    metrics.update(self.validate())
                    self.monitor.validation(self.global_step, metrics)
                if (save_freq > 0 and (self.global_step % save_freq == 0 or stopping)) or (stop_after and stopping):
                    self._save_and_time(metrics)
                bad = [k for k, v in metrics.items() if k.startswith("actor/") and isinstance(v, float) and not math.isfinite(v)]
                if bad:
                    logger.warning("step %d: non-finite metrics %s", self.global_step, bad)
                self._log(metrics, self.global_step)
                advance()
        return self.history

    def _log(self, metrics: dict[str, Any], step: int) -> None:
        self.history.append({"step": step, **metrics})
        self.tracker.log(metrics, step)
