"""The driver's training step without Ray (test_trainer_step*.py, test_preemption_loop.py): a
scripted engine that answers by role and view, a recording worker group whose rollouts come from
the real worker's packing code, and `make_trainer`, a `Trainer` on both."""

from __future__ import annotations

import pytest
import torch

from corewarding.batch import Batch
from corewarding.data import write_builtin_dataset
from corewarding.config import compose_config, load_config
from corewarding.data import load_tokenizer
from corewarding.trainer.ray_trainer import Trainer
from corewarding.trainer.run import build_datasets, build_loader
from corewarding.trainer.tracking import Tracker
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
