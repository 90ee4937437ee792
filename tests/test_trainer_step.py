"""The driver's training step without Ray: `Trainer.train_step` / `validate` against a recording
worker group whose rollouts come from the real worker's packing code and a scripted engine.

The engine answers by role and view, so every reward and advantage below is worked out by hand:
the order of the worker calls (EMA update before the teacher's rollouts), which prompts the
policy and the teacher see (`data.use_aug`, `data.p`), `teacher_n`, `update_interval`, the EMA step
index, Co-rewarding-I's per-view groups, the padding of a validation batch to the worker count and
the validation sampling and scorer of the release preset.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from corewarding.algos import ema_weight, grpo_advantages
from corewarding.batch import Batch
from corewarding.data import DataError, write_builtin_dataset
from corewarding.config import compose_config, load_config
from corewarding.data import load_tokenizer
from corewarding.trainer.ray_trainer import Trainer
from corewarding.trainer.run import build_datasets, build_loader
from corewarding.trainer.tracking import Tracker, read_metrics
from corewarding.workers.update.actor import ActorUpdate
from corewarding.workers.rollout.base import RolloutOutput
from corewarding.workers.rollout_runner import Generated, RolloutRunner

N = 4  # policy rollouts per prompt
R = 12  # max response length
# Scripted boxed answers of the policy's N rollouts on each view, and of every teacher rollout.
POLICY_ANSWERS = {"original": ["5", "5", "7", "8"], "rephrased": ["9", "9", "9", "5"]}
TEACHER_ANSWER = "5"


class ScriptedEngine:
    """Answers "\\boxed{a}" with `a` from the role (policy / teacher / val) and the prompt's view;
    records every call."""

    def __init__(self, tokenizer, prompt_info: dict[tuple[int, ...], dict]) -> None:
        self.tokenizer = tokenizer
        self.prompt_info = prompt_info
        self.role = "policy"
        self.calls: list[dict] = []
        # validation: right on the first question only
        self.val_answer = lambda info: info["ground_truth"] if info["index"] == 0 else "nope"
        self.policy_answer = lambda info, j: POLICY_ANSWERS[info["view"]][j]

    def _answer(self, info: dict, j: int) -> str:
        if self.role == "teacher":
            return TEACHER_ANSWER
        if self.role == "validation":
            return self.val_answer(info)
        return self.policy_answer(info, j)

    def generate(self, prompts, sampling):
        infos = [self.prompt_info[tuple(p)] for p in prompts]
        self.calls.append({"role": self.role, "views": [i["view"] for i in infos], "sampling": sampling})
        outputs = []
        for info in infos:
            for j in range(sampling.n):
                ids = self.tokenizer.encode(f"\\boxed{{{self._answer(info, j)}}}", add_special_tokens=False)
                outputs.append(RolloutOutput(token_ids=ids + [self.tokenizer.eos_token_id]))
        return outputs

    def load_weights(self, named):
        raise AssertionError("the fake group never changes worker weights")

    def sleep(self):
        pass

    def wake_up(self, tags=None):
        pass

    def close(self):
        pass


class RecordingWorkers:
    """A `WorkerGroup` of world size 2 on one in-process worker: rollouts go through the real
    `generate_sequences`, log-probs are constants, updates and the other calls record."""

    world_size = 2

    def __init__(self, worker, engine: ScriptedEngine) -> None:
        self.worker, self.engine = worker, engine
        self.calls: list[str] = []
        self.teacher_weights: list[float] = []
        self.updates: list[Batch] = []

    def _split(self, method: str, batch: Batch) -> None:
        assert len(batch) % self.world_size == 0, f"{method}: {len(batch)} rows for {self.world_size} workers"

    def generate_sequences(self, prompts: Batch, role: str, prompt_width: int) -> Generated:
        self._split("generate_sequences", prompts)
        self.calls.append(f"generate:{role}")
        self.engine.role = role
        return self.worker.generate_sequences(prompts, role=role, prompt_width=prompt_width)

    def compute_log_prob(self, batch: Batch, model: str = "actor", with_entropy: bool = False,
                         with_self_certainty: bool = False) -> Batch:
        self._split("compute_log_prob", batch)
        self.calls.append(f"log_prob:{model}")
        shape = batch.tensors["responses"].shape
        name = "old_log_probs" if model == "actor" else "ref_log_probs"
        tensors = {name: torch.full(shape, -1.0)}
        if with_entropy:
            tensors["entropy"] = torch.full(shape, 0.5)
        if with_self_certainty:
            tensors["self_certainty"] = torch.full(shape, 2.0)
        return Batch(tensors)

    def update_actor(self, batch: Batch, rollouts_per_prompt: int) -> ActorUpdate:
        self._split("update_actor", batch)
        self.calls.append("update_actor")
        self.updates.append(Batch(dict(batch.tensors), batch.rows))  # as it was sent
        self.rollouts_per_prompt = rollouts_per_prompt
        shape = batch.tensors["responses"].shape
        on_policy = "old_log_probs" not in batch.tensors
        tokens = Batch({"old_log_probs": torch.full(shape, -1.0), "entropy": torch.full(shape, 0.5)}) if on_policy else Batch()
        return ActorUpdate({"actor/pg_loss": 0.0}, tokens)

    def update_teacher(self, weight: float) -> None:
        self.calls.append("update_teacher")
        self.teacher_weights.append(weight)

    def save_checkpoint(self, step_dir: str) -> None:
        self.calls.append("save_checkpoint")

    def load_checkpoint(self, step_dir: str) -> None:
        self.calls.append("load_checkpoint")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_builtin_dataset(tmp_path_factory.mktemp("data"), n_train=8, n_val=3, seed=0)


def make_trainer(tiny_model_path, data, tmp_path, method: str, *extra: str):
    from corewarding.workers.fsdp_worker import ActorRolloutRefWorker

    cfg = load_config(compose_config([
        f"reward_model.reward_manager={method}", f"actor_rollout_ref.model.path={tiny_model_path}",
        f"data.train_files={data['train']}", f"data.train_aug_files={data['train_rewrite']}",
        f"data.val_files={data['val']}", "data.train_batch_size=2", "data.max_prompt_length=192",
        f"data.max_response_length={R}", "data.shuffle=False", "actor_rollout_ref.rollout.name=hf",
        f"actor_rollout_ref.rollout.n={N}", "actor_rollout_ref.actor.ppo_mini_batch_size=2",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2", "trainer.device=cpu", "trainer.n_gpus_per_node=2",
        f"trainer.default_local_dir={tmp_path}", *extra,
    ]))
    method_ = cfg.method
    tokenizer = load_tokenizer(str(tiny_model_path))
    train, val = build_datasets(cfg, method_, tokenizer)
    prompt_info = {}
    for item in [*train.items, *(val.items if val is not None else [])]:
        for sub in (item["original"], item["rephrased"]) if "original" in item else (item,):
            prompt_info[tuple(sub["input_ids"])] = {"view": sub.get("view", "original"), "index": sub["index"],
                                                    "ground_truth": sub["ground_truth"]}
    engine = ScriptedEngine(tokenizer, prompt_info)
    worker = ActorRolloutRefWorker(cfg, rank=0, world_size=1)
    worker.rollout = RolloutRunner(engine, cfg.actor_rollout_ref.rollout, R, tokenizer, tokenizer.pad_token_id,
                                   [tokenizer.eos_token_id], torch.device("cpu"), 0, None)
    workers = RecordingWorkers(worker, engine)
    loader = build_loader(cfg, train)
    tracker = Tracker(tmp_path, ["console"], printer=lambda line: None)
    trainer = Trainer(cfg, tokenizer, loader, val, workers, tracker, total_steps=4)
    return trainer, workers, engine


def run_steps(trainer: Trainer, steps: int) -> list[dict]:
    batches = iter(trainer.loader)
    return [trainer.train_step(next(batches)) for _ in range(steps)]


def rows_by_uid(batch: Batch, key: str) -> dict[str, list]:
    out: dict[str, list] = {}
    for uid, value in zip(batch.rows["uid"], batch.tensors[key].tolist()):
        out.setdefault(uid, []).append(value)
    return out


def test_co_rewarding_ii_order_teacher_view_and_interval(tiny_model_path, data, tmp_path):
    """update_interval=2: the EMA update comes at step 2 only (k = 1: the steps before it), after the
    policy's rollouts and before the teacher's; with data.use_aug and data.p=0 the policy answers the
    original question and the teacher the rephrased one, teacher_n times."""
    trainer, workers, engine = make_trainer(
        tiny_model_path, data, tmp_path, "co_rewarding_II", "data.use_aug=True", "data.p=0",
        "actor_rollout_ref.rollout.teacher_n=3", "actor_rollout_ref.ref.sliding_average.update_interval=2",
        "actor_rollout_ref.ref.sliding_average.alpha_start=0.9", "actor_rollout_ref.ref.sliding_average.alpha_end=0.99",
    )
    metrics = run_steps(trainer, 2)
    one_step = ["generate:policy", "generate:teacher", "log_prob:ref", "update_actor"]  # on-policy: no old pass
    with_update = ["generate:policy", "update_teacher", "generate:teacher", "log_prob:ref", "update_actor"]
    assert workers.calls == one_step + with_update
    assert workers.teacher_weights == [pytest.approx(ema_weight(1, 4, 0.9, 0.99))]
    assert "teacher/ema_weight" not in metrics[0] and metrics[1]["teacher/ema_weight"] == pytest.approx(ema_weight(1, 4, 0.9, 0.99))

    policy_calls = [c for c in engine.calls if c["role"] == "policy"]
    teacher_calls = [c for c in engine.calls if c["role"] == "teacher"]
    assert all(set(c["views"]) == {"original"} and c["sampling"].n == N for c in policy_calls)
    assert all(set(c["views"]) == {"rephrased"} and c["sampling"].n == 3 for c in teacher_calls)

    # the teacher's unanimous "5" is every policy rollout's label: original-view answers 5, 5, 7, 8
    # score 1, 1, 0, 0 -> mean 0.5, unbiased std sqrt(1/3) -> A = +-0.5 / (sqrt(1/3) + 1e-6)
    update = workers.updates[0]
    assert workers.rollouts_per_prompt == N
    scores, advantages = rows_by_uid(update, "scores"), rows_by_uid(update, "advantages")
    assert len(scores) == 2
    expected = 0.5 / (3 ** -0.5 + 1e-6)
    for uid in scores:
        assert sorted(scores[uid]) == [0.0, 0.0, 1.0, 1.0]
        per_rollout = sorted(row[0] for row in advantages[uid])
        assert per_rollout == pytest.approx([-expected, -expected, expected, expected], rel=1e-6)
    assert metrics[0]["reward/mean"] == pytest.approx(0.5)


@pytest.mark.parametrize("swap_p, policy_view, teacher_view", [(None, "rephrased", "original"), ("0", "original", "rephrased")],
                         ids=["default-p1-release", "p0"])
def test_use_aug_views_follow_data_p(swap_p, policy_view, teacher_view, tiny_model_path, data, tmp_path):
    """data.use_aug: by default (data.p=1.0, the release) every pair is swapped, so the policy
    trains on the rephrased question and the teacher answers the original; data.p=0 is the reverse.
    The teacher's unanimous 5 labels the policy's answers: rephrased 9, 9, 9, 5 score 1/4 on
    average, original 5, 5, 7, 8 score 1/2."""
    extra = ["data.use_aug=True"] + ([f"data.p={swap_p}"] if swap_p is not None else [])
    trainer, workers, engine = make_trainer(tiny_model_path, data, tmp_path, "co_rewarding_II", *extra)
    metrics = run_steps(trainer, 2)
    for call in engine.calls:
        assert set(call["views"]) == {policy_view if call["role"] == "policy" else teacher_view}, call["role"]
    for update in workers.updates:
        assert set(update.rows["view"]) == {policy_view} and set(update.rows["views_swapped"]) == {swap_p is None}
    assert [m["reward/mean"] for m in metrics] == pytest.approx([0.25 if policy_view == "rephrased" else 0.5] * 2)


def test_ema_step_counts_from_zero(tiny_model_path, data, tmp_path):
    """The release's index: the teacher update of step k uses a_{k-1}, so the first one is exactly
    alpha_start and the second a_1 of the cosine over the run's 4 steps."""
    trainer, workers, _ = make_trainer(
        tiny_model_path, data, tmp_path, "co_rewarding_II",
        "actor_rollout_ref.ref.sliding_average.alpha_start=0.9", "actor_rollout_ref.ref.sliding_average.alpha_end=0.99",
    )
    run_steps(trainer, 2)
    assert workers.teacher_weights[0] == 0.9
    assert workers.teacher_weights[1] == pytest.approx(0.99 - 0.09 / 2 * (1 + math.cos(math.pi / 4)))


def test_co_rewarding_i_groups_each_view_separately(tiny_model_path, data, tmp_path):
    """Originals (5, 5, 7, 8) are scored against the rephrased majority 9: all 0, advantage 0.
    Rephrased (9, 9, 9, 5) against the original majority 5: scores 0, 0, 0, 1, mean 1/4, unbiased
    std 1/2, A = (-1/2, -1/2, -1/2, 3/2). One group for both views would give other numbers."""
    trainer, workers, engine = make_trainer(tiny_model_path, data, tmp_path, "co_reward")
    run_steps(trainer, 1)
    assert workers.calls == ["generate:policy", "log_prob:ref", "update_actor"]
    update = workers.updates[0]
    assert workers.rollouts_per_prompt == 2 * N  # a mini-batch holds both views of its pairs
    views = dict(zip(update.rows["uid"], update.rows["view"]))
    scores, advantages = rows_by_uid(update, "scores"), rows_by_uid(update, "advantages")
    assert sorted(views.values()) == ["original", "original", "rephrased", "rephrased"]
    for uid, view in views.items():
        per_rollout = sorted(row[0] for row in advantages[uid])
        if view == "original":
            assert scores[uid] == [0.0] * N and per_rollout == [0.0] * N
        else:
            assert sorted(scores[uid]) == [0.0, 0.0, 0.0, 1.0]
            assert per_rollout == pytest.approx([-0.5, -0.5, -0.5, 1.5], rel=1e-5)


def test_validation_pads_to_the_worker_count(tiny_model_path, data, tmp_path):
    """3 validation prompts on 2 workers: padded to 4 for the dispatch, scored on the 3 real ones,
    sampled with val_kwargs (temperature 0.8, one sample)."""
    trainer, workers, engine = make_trainer(tiny_model_path, data, tmp_path, "naive", "trainer.log_val_generations=2")
    metrics = trainer.validate()
    assert workers.calls == ["generate:validation"]
    (call,) = engine.calls
    assert len(call["views"]) == 4
    assert call["sampling"].n == 1 and call["sampling"].temperature == 0.8 and not call["sampling"].greedy
    assert metrics["val/acc"] == pytest.approx(1 / 3)
    sources = [item["data_source"] for item in trainer.val_dataset.items]
    right = sources[[item["index"] for item in trainer.val_dataset.items].index(0)]
    for source in set(sources):
        expected = (source == right) / sources.count(source)
        assert metrics[f"val/{source}/acc"] == pytest.approx(expected)
    assert metrics["val/answer_present"] == 1.0
    shown = read_metrics(tmp_path / "val_generations.jsonl")  # trainer.log_val_generations=2
    assert len(shown) == 2 and shown[0]["step"] == 0
    assert [s["reward"] for s in shown] == [float(s["answer"] == s["ground_truth"]) for s in shown]


def test_validation_with_n_responses_reports_verls_metrics(tiny_model_path, data, tmp_path):
    """val_kwargs.n=2, every question answered right by its first response and wrong ("nope") by
    its second: val/acc = 1/2 as before, and per source verl's mean@2 = 1/2, std@2 = 1/2; over
    verl's bootstrap draws (RandomState(42), 1000 pairs of the 2 responses) best@2 is the share of
    pairs holding response 0, worst@2 the share of pairs (0, 0), and maj@2 the first drawn
    response's score (a 1-1 tie goes to the answer seen first)."""
    trainer, _, engine = make_trainer(tiny_model_path, data, tmp_path, "naive", "actor_rollout_ref.rollout.val_kwargs.n=2")
    calls = iter(range(10**6))
    engine.val_answer = lambda info: info["ground_truth"] if next(calls) % 2 == 0 else "nope"
    metrics = trainer.validate()
    assert metrics["val/acc"] == 0.5
    draws = np.random.RandomState(42).choice(2, size=(1000, 2), replace=True)
    best, worst, first = (draws == 0).any(1), (draws == 0).all(1), (draws[:, 0] == 0)
    for source in {item["data_source"] for item in trainer.val_dataset.items}:
        assert metrics[f"val/{source}/mean@2"] == 0.5 and metrics[f"val/{source}/std@2"] == 0.5
        for name, expected in (("best", best), ("worst", worst), ("maj", first)):
            assert metrics[f"val/{source}/{name}@2/mean"] == pytest.approx(expected.mean(), abs=1e-12), name
            assert metrics[f"val/{source}/{name}@2/std"] == pytest.approx(expected.std(), abs=1e-12), name


@pytest.mark.parametrize(("method", "extra", "old_pass"), [
    ("naive", [], False),  # one optimizer step per batch: the update's own forward gives the old log-probs
    ("naive", ["actor_rollout_ref.actor.on_policy_shortcut=False"], True),
    ("naive", ["actor_rollout_ref.actor.ppo_epochs=2"], True),
    ("naive", ["actor_rollout_ref.actor.ppo_mini_batch_size=1"], True),
    ("self_certainty", [], True),  # the reward reads the policy's per-token statistics before the update
    ("entropy", [], True),
])
def test_old_log_prob_pass_only_when_needed(tiny_model_path, data, tmp_path, method, extra, old_pass):
    trainer, workers, engine = make_trainer(tiny_model_path, data, tmp_path, method, *extra)
    (metrics,) = run_steps(trainer, 1)
    assert ("log_prob:actor" in workers.calls) == old_pass
    assert ("old_log_probs" in workers.updates[0].tensors) == old_pass
    assert metrics["actor/entropy"] == pytest.approx(0.5)  # from the old pass or from the update


def test_validation_with_the_release_preset(tiny_model_path, data, tmp_path):
    """+preset=release validates greedily (val_kwargs.do_sample=False: temperature, top_p and top_k
    ignored; n copies of the greedy response, as verl repeats the prompts) and scores with the
    Hendrycks check: answers written "<truth>.0" are right for math-verify, wrong for the release.
    Ours samples at temperature 0.8."""
    answer_with_point_zero = lambda info: info["ground_truth"] + ".0"  # noqa: E731
    trainer, _, engine = make_trainer(tiny_model_path, data, tmp_path / "ours", "naive", "actor_rollout_ref.rollout.val_kwargs.n=2")
    engine.val_answer = answer_with_point_zero
    ours = trainer.validate()
    release_trainer, _, release_engine = make_trainer(
        tiny_model_path, data, tmp_path / "release", "naive", "+preset=release", "actor_rollout_ref.rollout.val_kwargs.n=2",
        "actor_rollout_ref.rollout.val_kwargs.temperature=0.8", "actor_rollout_ref.rollout.val_kwargs.top_p=0.5",
    )
    release_engine.val_answer = answer_with_point_zero
    release = release_trainer.validate()
    (ours_call,), (release_call,) = engine.calls, release_engine.calls
    assert (ours_call["sampling"].temperature, ours_call["sampling"].n) == (0.8, 2) and not ours_call["sampling"].greedy
    assert release_call["sampling"].greedy and release_call["sampling"].n == 2 and release_call["sampling"].top_p == 1.0
    assert ours["val/acc"] == 1.0 and release["val/acc"] == 0.0


def test_per_view_loss_gives_every_worker_both_views_and_monitor_metrics(tiny_model_path, data, tmp_path):
    """co_reward_loss=per_view: rows carry view_id, and each worker's share holds as many groups of
    each view (the release pairs micro-batches of the two views); whole groups stay on one worker.
    Every step logs the collapse monitor's metrics."""
    trainer, workers, _ = make_trainer(tiny_model_path, data, tmp_path, "co_reward",
                                       "actor_rollout_ref.actor.co_reward_loss=per_view")
    (metrics,) = run_steps(trainer, 1)
    update = workers.updates[0]
    for share in update.chunk(2):
        assert sorted(share["view_id"].tolist()) == [0] * N + [1] * N
        uids = share.rows["uid"]
        assert all(uids.count(u) == N for u in uids)  # whole groups
    for key in ("monitor/majority_ratio", "monitor/distinct_answers", "monitor/zero_adv_groups", "monitor/collapse"):
        assert key in metrics
    assert metrics["monitor/majority_ratio"] == pytest.approx((2 / 4 + 3 / 4) / 2)  # originals 5,5,7,8; rephrased 9,9,9,5
    assert metrics["monitor/zero_adv_groups"] == pytest.approx(0.5)  # the originals all score 0


def test_fit_gives_the_monitor_every_validation(tiny_model_path, data, tmp_path):
    """The collapse monitor's verdict reads the validations: the base model's before step 1 and those
    at test_freq, each logged with the flags, after the step's own update."""
    trainer, _, _ = make_trainer(tiny_model_path, data, tmp_path, "majority_voting", "trainer.test_freq=2",
                                 "trainer.save_freq=-1", "trainer.val_before_train=True")
    history = trainer.fit(progress=False)
    validated = [h for h in history if "val/acc" in h]
    assert [h["step"] for h in validated] == [0, 2, 4]
    assert trainer.monitor.val_acc == [h["val/acc"] for h in validated]
    for entry in history:
        assert {"monitor/acc_fell", "monitor/collapse", "monitor/degenerate", "monitor/hacking_signs"} <= set(entry)


def filtered_trainer(tiny_model_path, data, tmp_path, method: str, *extra: str):
    """Dynamic sampling over the unshuffled items 0..7, 2 per generation batch and 2 groups per
    step; the policy answers items 0, 1, 2 with one answer ("5") on all N rollouts."""
    trainer, workers, engine = make_trainer(tiny_model_path, data, tmp_path, method, "algorithm.filter_groups.enable=True",
                                            "data.gen_batch_size=2", *extra)
    default = engine.policy_answer
    engine.policy_answer = lambda info, j: "5" if info["index"] <= 2 else default(info, j)
    return trainer, workers, engine


def test_dynamic_sampling_keeps_groups_with_a_spread(tiny_model_path, data, tmp_path):
    """Majority voting, metric score: items 0, 1, 2 score 1 on all rollouts (dropped); items 3..7
    answer 5, 5, 7, 8 -> 1, 1, 0, 0 (kept). Step 1 takes 3 generation batches (items 0-1, 2-3, 4-5),
    keeps 3, 4 and 5, trims 5 (the update sees exactly 2 groups, as verl); step 2 takes items 6-7."""
    trainer, workers, _ = filtered_trainer(tiny_model_path, data, tmp_path, "majority_voting")
    batches = trainer._batch_stream()
    first = trainer.train_step(next(batches), batches)
    assert trainer.loader.state_dict()["position"] == 3  # the next step starts at items 6-7
    assert [first[k] for k in ("train/num_gen_batches", "filter_groups/kept", "filter_groups/dropped",
                               "filter_groups/trimmed")] == [3, 3, 3, 1]
    assert workers.calls == ["generate:policy"] * 3 + ["log_prob:ref", "update_actor"]
    update = workers.updates[0]
    assert len(update) == 2 * N and workers.rollouts_per_prompt == N
    assert sorted(set(update.rows["index"])) == [3, 4]
    for uid, scores in rows_by_uid(update, "scores").items():
        assert sorted(scores) == [0.0, 0.0, 1.0, 1.0], uid
    assert first["reward/mean"] == pytest.approx(0.5)  # over the trained groups
    second = trainer.train_step(next(batches), batches)
    assert second["train/num_gen_batches"] == 1 and sorted(set(workers.updates[1].rows["index"])) == [6, 7]


def test_dynamic_sampling_limit_is_a_clear_error(tiny_model_path, data, tmp_path):
    trainer, _, _ = filtered_trainer(tiny_model_path, data, tmp_path, "majority_voting",
                                     "algorithm.filter_groups.max_num_gen_batches=2")
    batches = trainer._batch_stream()
    with pytest.raises(DataError, match=r"step 1: algorithm.filter_groups kept 1 of the data.train_batch_size=2 groups "
                                        r"after max_num_gen_batches=2 .*max_num_gen_batches \(0: no limit\)"):
        trainer.train_step(next(batches), batches)


def test_dynamic_sampling_keeps_a_pair_with_both_views(tiny_model_path, data, tmp_path):
    """Co-rewarding-I (per-view loss): items 0, 1, 2 answer 5 on both views, so every rollout agrees
    with the other view's label (all 1): both groups constant, the pair is dropped. Items 3..7:
    originals 5, 5, 7, 8 against the rephrased label 9 score 0 (constant), rephrased 9, 9, 9, 5
    against 5 score 0, 0, 0, 1: the pair is kept with both its groups."""
    trainer, workers, engine = filtered_trainer(tiny_model_path, data, tmp_path, "co_reward",
                                                "actor_rollout_ref.actor.co_reward_loss=per_view")
    batches = trainer._batch_stream()
    metrics = trainer.train_step(next(batches), batches)
    assert [metrics[k] for k in ("train/num_gen_batches", "filter_groups/kept", "filter_groups/dropped")] == [3, 3, 3]
    update = workers.updates[0]
    assert len(update) == 2 * 2 * N and workers.rollouts_per_prompt == 2 * N
    pairs: dict = {}
    for pair, view in zip(update.rows["pair_id"], update.rows["view"]):
        pairs.setdefault(pair, set()).add(view)
    assert pairs == {"3#1": {"original", "rephrased"}, "4#2": {"original", "rephrased"}}
    for worker_rows in update.chunk(2):  # the per-view loss: every worker gets one group of each view
        assert sorted(worker_rows.rows["view"]) == ["original"] * N + ["rephrased"] * N


@pytest.mark.parametrize("metric", ["score", "acc"])
def test_dynamic_sampling_teacher_rollouts(metric, tiny_model_path, data, tmp_path):
    """Co-rewarding-II. score: the reward needs the teacher's "5" votes for every prompt, so the
    teacher answers each generation batch; acc (ground truth): the teacher answers the kept prompts
    only, once. Items 0, 1, 2: all rollouts "5" (score 1, acc 0: constant); items 3..7 answer the
    ground truth once (acc 0, 0, 0, 1) after 5, 5, 7 (score 1, 1, 0, 0: the truth is not 5)."""
    trainer, workers, engine = filtered_trainer(tiny_model_path, data, tmp_path, "co_rewarding_II",
                                                f"algorithm.filter_groups.metric={metric}")
    answers = ["5", "5", "7"]
    engine.policy_answer = lambda info, j: "5" if info["index"] <= 2 else (info["ground_truth"] if j == 3 else answers[j])
    assert all(str(trainer.loader.dataset[i]["ground_truth"]) not in ("5", "7") for i in range(3, 6))
    batches = trainer._batch_stream()
    metrics = trainer.train_step(next(batches), batches)
    assert metrics["train/num_gen_batches"] == 3
    teacher_calls = [c for c in engine.calls if c["role"] == "teacher"]
    if metric == "score":
        assert workers.calls[:6] == ["generate:policy", "update_teacher", "generate:teacher",
                                     "generate:policy", "generate:teacher", "generate:policy"]
        assert [len(c["views"]) for c in teacher_calls] == [2, 2, 2]
    else:
        assert workers.calls[:5] == ["generate:policy", "update_teacher", "generate:policy", "generate:policy",
                                     "generate:teacher"]
        assert [len(c["views"]) for c in teacher_calls] == [2]
    update = workers.updates[0]
    assert sorted(set(update.rows["index"])) == [3, 4]
    for scores in rows_by_uid(update, "scores").values():
        assert sorted(scores) == [0.0, 0.0, 1.0, 1.0]  # the trained reward is the teacher's label either way


def test_resume_with_another_data_seed_is_one_line_unless_allowed(tiny_model_path, data, tmp_path):
    """The loader's state in a checkpoint carries data.seed (and data.p): a resume with another
    seed stops with one CheckpointError line naming the override, which then lets it through."""
    from corewarding.trainer.checkpoint import CheckpointError

    saved, _, _ = make_trainer(tiny_model_path, data, tmp_path / "a", "naive", "data.seed=1")
    state = {"dataloader": saved.loader.state_dict(), "method": "gt", "world_size": 2, "global_step": 1}
    other, _, _ = make_trainer(tiny_model_path, data, tmp_path / "b", "naive", "data.seed=2")
    with pytest.raises(CheckpointError, match=r"data.seed=1 but this run has data.seed=2.*"
                                              r"data.resume_allow_sampling_change=true") as err:
        other.load_checkpoint(tmp_path / "a", state)
    assert "\n" not in str(err.value)
    allowed, _, _ = make_trainer(tiny_model_path, data, tmp_path / "c", "naive", "data.seed=2",
                                 "data.resume_allow_sampling_change=true")
    allowed.load_checkpoint(tmp_path / "a", state)
    assert allowed.global_step == 1


@pytest.mark.parametrize("method", ["naive", "majority_voting", "self_certainty", "entropy", "co_reward", "co_rewarding_II"])
def test_overlong_penalty_is_added_to_every_methods_score(tiny_model_path, data, tmp_path, monkeypatch, method):
    """reward_model.overlong_buffer: every rollout's training score is the method's score plus
    min(-(L - (R - len)) / len * penalty_factor, 0), before the GRPO advantages; answers of different
    lengths make the penalty differ within a group, so the advantages move too."""
    monkeypatch.setitem(POLICY_ANSWERS, "original", ["5", "5", "17", "8888"])
    monkeypatch.setitem(POLICY_ANSWERS, "rephrased", ["9", "999", "9", "5"])
    plain_trainer, plain, _ = make_trainer(tiny_model_path, data, tmp_path / "plain", method)
    run_steps(plain_trainer, 1)
    trainer, shaped, _ = make_trainer(tiny_model_path, data, tmp_path / "shaped", method,
                                      "reward_model.overlong_buffer.enable=true", "reward_model.overlong_buffer.len=10",
                                      "reward_model.overlong_buffer.penalty_factor=0.5")
    (metrics,) = run_steps(trainer, 1)
    before, after = plain.updates[0], shaped.updates[0]
    assert after.rows["uid"] == before.rows["uid"]
    lengths = after["response_mask"].sum(-1).double()
    penalty = torch.clamp(-(lengths - (R - 10)) / 10 * 0.5, max=0.0)  # worked out here, not by the trainer's function
    assert len(set(penalty.tolist())) > 1 and (penalty < 0).all()
    torch.testing.assert_close(after["scores"].double(), before["scores"].double() + penalty, rtol=0, atol=1e-6)
    advantages = grpo_advantages(after["scores"], after.rows["uid"])
    torch.testing.assert_close(after["advantages"][:, 0], advantages, rtol=0, atol=1e-6)  # first token: the rollout's A
    assert not torch.allclose(after["advantages"][:, 0], before["advantages"][:, 0], atol=1e-3)
    assert metrics["reward/overlong_penalty"] == pytest.approx(float(penalty.mean()))
    assert metrics["reward/overlong_penalised_ratio"] == 1.0
    assert "reward/overlong_penalty" not in run_steps(plain_trainer, 1)[0]


def test_rollouts_say_which_responses_were_truncated(tiny_model_path, data, tmp_path, monkeypatch):
    """`truncated`: the response filled data.max_response_length without stopping (here: one answer
    too long for R tokens, cut by the runner; the others end with EOS)."""
    monkeypatch.setitem(POLICY_ANSWERS, "original", ["5", "5", "1" * 40, "8"])
    trainer, workers, _ = make_trainer(tiny_model_path, data, tmp_path, "naive",
                                       "actor_rollout_ref.actor.mask_truncated_completions=true")
    run_steps(trainer, 1)
    update = workers.updates[0]
    full = update["response_mask"].sum(-1) == R
    assert update["truncated"].tolist() == full.tolist() and 0 < int(full.sum()) < len(update)


def test_co_rewarding_iii_one_ema_update_then_the_teacher_on_both_views(tiny_model_path, data, tmp_path):
    """Per step: the policy answers both views, the EMA update comes once and before the teacher's
    rollouts, which cover both views in one call (n each); every group is one (view, question) of
    4 rollouts, never pooled across the views; the update gets both views with 2N rollouts per prompt."""
    trainer, workers, engine = make_trainer(
        tiny_model_path, data, tmp_path, "co_rewarding_III", "data.use_aug=True",
        "actor_rollout_ref.ref.sliding_average.alpha_start=0.9", "actor_rollout_ref.ref.sliding_average.alpha_end=0.99",
    )
    metrics = run_steps(trainer, 2)
    one_step = ["generate:policy", "update_teacher", "generate:teacher", "log_prob:ref", "update_actor"]
    assert workers.calls == one_step * 2
    assert workers.teacher_weights == pytest.approx([ema_weight(0, 4, 0.9, 0.99), ema_weight(1, 4, 0.9, 0.99)])
    for role in ("policy", "teacher"):
        calls = [c for c in engine.calls if c["role"] == role]
        assert len(calls) == 2 and all(sorted(c["views"]) == ["original"] * 2 + ["rephrased"] * 2 for c in calls)
        assert all(c["sampling"].n == N for c in calls)

    # the teacher's unanimous "5" labels both views: originals 5, 5, 7, 8 -> 1, 1, 0, 0; rephrased
    # 9, 9, 9, 5 -> 0, 0, 0, 1 (mean 0.25, unbiased std 0.5); pooled per pair they would share a mean
    update = workers.updates[0]
    assert workers.rollouts_per_prompt == 2 * N
    scores, advantages = rows_by_uid(update, "scores"), rows_by_uid(update, "advantages")
    views = {uid: {v for u, v in zip(update.rows["uid"], update.rows["view"]) if u == uid} for uid in scores}
    assert len(scores) == 4 and all(len(v) == 1 for v in views.values())
    for uid, values in scores.items():
        (view,) = views[uid]
        if view == "original":
            assert sorted(values) == [0.0, 0.0, 1.0, 1.0]
            expected = 0.5 / (3 ** -0.5 + 1e-6)
            assert sorted(row[0] for row in advantages[uid]) == pytest.approx([-expected] * 2 + [expected] * 2, rel=1e-6)
        else:
            assert sorted(values) == [0.0, 0.0, 0.0, 1.0]
            assert sorted(row[0] for row in advantages[uid]) == pytest.approx([-0.25 / (0.5 + 1e-6)] * 3 + [0.75 / (0.5 + 1e-6)],
                                                              rel=1e-6)
    assert metrics[0]["coreward/ori_pseudo_pass_rate"] == 0.5 and metrics[0]["coreward/aug_pseudo_pass_rate"] == 0.25
    assert metrics[0]["teacher/ema_weight"] == pytest.approx(0.9)


def test_ttrl_votes_over_n_votes_and_updates_on_the_first_n_samples(tiny_model_path, data, tmp_path):
    """TTRL's split: 5 rollouts drawn per prompt, the majority over all 5 is the label ("5"), the
    update gets the first 2 of each prompt ("7", "7": reward 0). A vote over the 2 kept would say "7"."""
    trainer, workers, engine = make_trainer(tiny_model_path, data, tmp_path, "majority_voting", "ttrl.enable=True",
                                            "ttrl.n_votes_per_prompt=5", "ttrl.n_samples_per_prompt=2")
    assert trainer.config.actor_rollout_ref.rollout.n == 5
    engine.policy_answer = lambda info, j: ["7", "7", "5", "5", "5"][j]
    metrics = run_steps(trainer, 1)[0]
    assert [c["sampling"].n for c in engine.calls if c["role"] == "policy"] == [5]
    update = workers.updates[0]
    assert workers.rollouts_per_prompt == 2 and len(update) == 4
    assert all(len(rows) == 2 for rows in rows_by_uid(update, "scores").values())
    assert update.tensors["scores"].tolist() == [0.0] * 4
    assert metrics["reward/majority_ratio"] == pytest.approx(0.6)  # 3 of the 5 voted


def test_ttrl_refuses_a_reward_that_reads_more_than_the_answers(tiny_model_path, data, tmp_path):
    from corewarding.config import ConfigError

    with pytest.raises(ConfigError, match=r"ttrl.enable=True with method self_certainty: .*majority_voting"):
        make_trainer(tiny_model_path, data, tmp_path, "self_certainty", "ttrl.enable=True",
                     "ttrl.n_votes_per_prompt=4", "ttrl.n_samples_per_prompt=2")
    with pytest.raises(ConfigError, match=r"ttrl.n_samples_per_prompt=8 > ttrl.n_votes_per_prompt=4"):
        make_trainer(tiny_model_path, data, tmp_path, "majority_voting", "ttrl.enable=True",
                     "ttrl.n_votes_per_prompt=4", "ttrl.n_samples_per_prompt=8")
