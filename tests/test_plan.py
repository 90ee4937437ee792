"""`python -m corewarding.plan`: the start-up memory check answered without a GPU, from the model's
config.json alone (tests/model_configs/: the published architectures, no weights). Every preset file
must start Qwen3-8B-Base, Qwen3-4B-Base and Llama-3.2-3B-Instruct on 8 GPUs of 80 GB."""

from __future__ import annotations

from pathlib import Path

import pytest

from corewarding.plan import main
from corewarding.workers.memory_plan import ModelShape
from test_memory_plan import QWEN3_8B_TOTAL

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "corewarding" / "config"
MODELS = REPO / "tests" / "model_configs"
METHODS = sorted(p.stem for p in (CONFIG_DIR / "method").glob("*.yaml"))
PRESETS = sorted(p.stem for p in (CONFIG_DIR / "preset").glob("*.yaml"))
# each method preset; each other preset alone (on ppo_trainer.yaml's defaults) and before each method
# preset, as the run scripts put +preset=release with RELEASE_EXACT=1
SELECTIONS = ([[f"+method={m}"] for m in METHODS] + [[f"+preset={p}"] for p in PRESETS]
              + [[f"+preset={p}", f"+method={m}"] for p in PRESETS for m in METHODS])
PUBLISHED_TOTALS = {"Qwen3-8B-Base": QWEN3_8B_TOTAL, "Qwen3-4B-Base": 4_022_468_096,
                    "Llama-3.2-3B-Instruct": 3_212_749_824}


def plan(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """The plan's exit status, stdout and stderr, run in this process."""
    try:
        status = main(list(args))
    except SystemExit as exc:
        status = exc.code
    out, err = capsys.readouterr()
    return status, out, err


def run_args(model: str | Path, *extra: str) -> list[str]:
    return [f"actor_rollout_ref.model.path={model}", "data.train_files=x.parquet", "data.train_aug_files=y.parquet",
            "trainer.n_gpus_per_node=8", *extra]


def test_the_fixtures_are_the_published_architectures():
    from transformers import AutoConfig

    assert {p.name for p in MODELS.iterdir()} == set(PUBLISHED_TOTALS)
    for name, total in PUBLISHED_TOTALS.items():
        assert ModelShape.from_hf_config(AutoConfig.from_pretrained(MODELS / name)).total == total, name


def test_the_presets_are_found():
    assert {"co_rewarding_i", "co_rewarding_ii", "co_rewarding_iii", "gt", "majority_voting", "self_certainty",
            "entropy"} <= set(METHODS) and "release" in PRESETS


@pytest.mark.parametrize("model", sorted(PUBLISHED_TOTALS))
@pytest.mark.parametrize("selection", SELECTIONS, ids=lambda s: "+".join(o.split("=")[1] for o in s))
def test_every_preset_starts_on_8_x_80_gb(selection, model, capsys):
    """No trainer.device given: the plan runs the GPU config on this CPU machine."""
    status, out, err = plan(capsys, *selection, *run_args(MODELS / model), "--gpu-memory-gb", "80")
    assert status == 0, out + err
    assert "fits: the workers' start-up memory check passes" in out
    assert "GPUs: 8 (1 node(s) x 8) of 80 GB; limit 95% = 76.0 GB" in out
    for part in ("actor", "reference", "vLLM", "push", "unsharded", "micro-batch", "context", "total"):
        assert any(line.startswith(part) for line in out.splitlines()), part


def test_the_printed_phases_of_qwen3_8b_with_co_rewarding_i(capsys):
    status, out, _ = plan(capsys, "+method=co_rewarding_i", *run_args(MODELS / "Qwen3-8B-Base"))
    rows = {line[:14].strip(): line[14:].split() for line in out.splitlines()}
    assert status == 0 and rows["total"] == ["63.3", "21.9", "38.1"] and rows["vLLM"] == ["48.0", "-", "-"]
    assert "largest gpu_memory_utilization that fits: 0.76" in out


def test_a_share_that_does_not_fit_is_lowered_once_and_said(capsys):
    """The release's Co-rewarding-I script asks for more than an 80 GB card holds: the run says so
    and uses the largest multiple of 0.05 that fits; skip_memory_check keeps what was asked."""
    status, out, err = plan(capsys, "+method=co_rewarding_i", *run_args(MODELS / "Qwen3-8B-Base"),
                            "actor_rollout_ref.rollout.gpu_memory_utilization=0.9")
    assert status == 0, out + err
    assert out.count("note: ") == 1 and ("note: actor_rollout_ref.rollout.gpu_memory_utilization=0.9 does not fit "
                                         "this 80 GB GPU beside the training state; using 0.75") in out
    assert "settings: gpu_memory_utilization 0.75," in out and "fits: the workers' start-up memory check passes" in out
    status, out, _ = plan(capsys, "+method=co_rewarding_i", *run_args(MODELS / "Qwen3-8B-Base"),
                          "actor_rollout_ref.rollout.gpu_memory_utilization=0.9", "trainer.skip_memory_check=True")
    assert status == 0 and "note: " not in out and "WARNING (trainer.skip_memory_check=True: starts anyway)" in out


def test_a_card_too_small_for_any_share_is_refused_naming_the_key(capsys):
    """On 24 GB cards the largest share that fits (0.31) cannot hold Qwen3-8B's 16 GB of weights."""
    status, out, err = plan(capsys, "+method=co_rewarding_i", *run_args(MODELS / "Qwen3-8B-Base"), "--gpu-memory-gb", "24")
    assert status == 1, out + err
    assert "note: " not in out and err.startswith("refused: the update phase needs ~38.1 GB of this 24 GB GPU")
    assert "actor_rollout_ref.rollout.gpu_memory_utilization=0.6 -> at most 0.31" in err


def test_a_model_folder_without_config_json_is_bad_input(capsys, tmp_path):
    for folder in (tmp_path, tmp_path / "absent"):
        status, out, err = plan(capsys, "+method=gt", *run_args(folder))
        assert status == 2 and out == ""
        assert err.startswith("error: actor_rollout_ref.model.path=") and str(folder / "config.json") in err
        assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("extra, message", [
    (["+method=no_such_method"], "cannot compose the configuration"),
    (["trainer.device=cpu"], "the memory plan is for GPU runs"),
    (["--gpu-memory-gb", "0"], "--gpu-memory-gb 0"),
])
def test_bad_input_is_one_error_line(extra, message, capsys):
    status, out, err = plan(capsys, *run_args(MODELS / "Qwen3-4B-Base"), *extra)
    assert status == 2 and out == "" and err.startswith("error: ") and message in err, err
    assert len(err.strip().splitlines()) == 1
