"""Export of a training checkpoint to a plain HF folder: the round trip keeps the logits exactly."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from corewarding.export import CheckpointError, export_checkpoint, resolve_model_path, resolve_step_dir

REPO = Path(__file__).resolve().parents[1]


def _logits(folder: Path, input_ids: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(input_ids=input_ids).logits


@pytest.fixture(scope="module")
def fake_run(tiny_model_path: Path, tmp_path_factory) -> Path:
    """The trainer's layout (FSDPWorker.save_checkpoint): run/latest_checkpointed_iteration.txt ->
    run/global_step_3/{actor/ (HF folder + optim/), ref/model.safetensors, rng/}. Both weight files
    carry the tied lm_head.weight that FSDP's full state dict has; ref/ differs from the actor, so
    that exporting the wrong one shows."""
    from safetensors.torch import load_file, save_file

    run = tmp_path_factory.mktemp("run")
    old_step = run / "global_step_1" / "actor"
    shutil.copytree(tiny_model_path, old_step)
    step = run / "global_step_3"
    shutil.copytree(tiny_model_path, step / "actor")
    (step / "ref").mkdir()
    state = load_file(str(tiny_model_path / "model.safetensors"))
    ref_state = {name: (t + 0.05 * torch.randn_like(t)) if t.is_floating_point() else t for name, t in state.items()}
    ref_state["lm_head.weight"] = ref_state["model.embed_tokens.weight"].clone()
    save_file(ref_state, str(step / "ref" / "model.safetensors"), metadata={"format": "pt"})
    state["lm_head.weight"] = state["model.embed_tokens.weight"].clone()
    save_file(state, str(step / "actor" / "model.safetensors"), metadata={"format": "pt"})
    (step / "actor" / "optim").mkdir()
    (step / "actor" / "optim" / "extra.pt").write_bytes(b"not a model file")
    (step / "rng").mkdir()
    (run / "latest_checkpointed_iteration.txt").write_text("3\n")
    return run


def test_resolve(fake_run: Path, tiny_model_path: Path) -> None:
    assert resolve_step_dir(fake_run) == fake_run / "global_step_3"
    assert resolve_step_dir(fake_run / "global_step_1") == fake_run / "global_step_1"
    assert resolve_model_path(fake_run) == fake_run / "global_step_3" / "actor"
    assert resolve_model_path(fake_run / "global_step_3") == fake_run / "global_step_3" / "actor"
    assert resolve_model_path(tiny_model_path) == tiny_model_path


def test_resolve_without_latest_file_refuses_as_resume_does(fake_run: Path, tmp_path: Path) -> None:
    """A run folder whose latest file is gone is not guessed at (`checkpoint_layout.latest_step_dir`):
    the error names the newest folder, which exports when named itself."""
    run = tmp_path / "run"
    shutil.copytree(fake_run, run)
    (run / "latest_checkpointed_iteration.txt").unlink()
    with pytest.raises(CheckpointError, match=r"no latest_checkpointed_iteration.txt.*global_step_3"):
        resolve_step_dir(run)
    assert resolve_step_dir(run / "global_step_3") == run / "global_step_3"


def test_bad_paths_say_what_is_expected(fake_run: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such file"):
        resolve_model_path(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        resolve_model_path(tmp_path / "empty")
    run = tmp_path / "bad"
    run.mkdir()
    (run / "latest_checkpointed_iteration.txt").write_text("7")
    with pytest.raises(CheckpointError, match="step 7"):
        resolve_step_dir(run)


def test_a_reference_that_was_not_saved_names_the_model_folder(fake_run: Path, tmp_path: Path) -> None:
    """A checkpoint of a run whose reference never moved has no ref/ (state.json says so)."""
    step = tmp_path / "run" / "global_step_2"
    shutil.copytree(fake_run / "global_step_3" / "actor", step / "actor")
    (step / "actor" / "optim" / "state.json").write_text(json.dumps({"ref_saved": False, "model_path": "/models/base"}))
    with pytest.raises(CheckpointError, match="not saved: use that model folder \\(/models/base\\)"):
        export_checkpoint(step, tmp_path / "out", which="ref")


@pytest.mark.parametrize("which", ["actor", "ref"])
def test_round_trip_logits(fake_run: Path, tmp_path: Path, which: str) -> None:
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = export_checkpoint(fake_run, tmp_path / f"export-{which}", which=which)
    names = sorted(p.name for p in out.iterdir())
    assert "config.json" in names and "model.safetensors" in names and "tokenizer.json" in names
    assert "optim" not in names and not any(name.endswith(".pt") for name in names)
    assert not (tmp_path / f"export-{which}.tmp-export").exists()
    exported = load_file(str(out / "model.safetensors"))
    assert "lm_head.weight" not in exported  # tied: save_pretrained leaves it out too

    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = torch.tensor([tokenizer("What is 2 + 3? \\boxed{5}")["input_ids"]])
    after = _logits(out, ids)
    if which == "actor":
        before = _logits(fake_run / "global_step_3" / "actor", ids)
    else:
        # the reference weights put into the actor's architecture by hand
        model = AutoModelForCausalLM.from_pretrained(fake_run / "global_step_3" / "actor", dtype=torch.float32).eval()
        ref = load_file(str(fake_run / "global_step_3" / "ref" / "model.safetensors"))
        model.load_state_dict(ref, strict=False)
        model.tie_weights()
        with torch.no_grad():
            before = model(input_ids=ids).logits
        assert not torch.equal(before, _logits(fake_run / "global_step_3" / "actor", ids))
    assert torch.equal(before, after)


def test_dtype_cast_and_overwrite(fake_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "bf16"
    export_checkpoint(fake_run / "global_step_3", out, dtype="bfloat16")
    config = json.loads((out / "config.json").read_text())
    assert config["torch_dtype"] == "bfloat16"
    from safetensors.torch import load_file

    assert all(t.dtype == torch.bfloat16 for t in load_file(str(out / "model.safetensors")).values())
    with pytest.raises(CheckpointError, match="not empty"):
        export_checkpoint(fake_run, out)
    export_checkpoint(fake_run, out, overwrite=True)
    assert all(t.dtype == torch.float32 for t in load_file(str(out / "model.safetensors")).values())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bf16"]  # no temp or old folder left behind


def test_overwrite_keeps_old_folder_when_swap_fails(fake_run: Path, tmp_path: Path, monkeypatch) -> None:
    import corewarding.export as export

    out = export_checkpoint(fake_run, tmp_path / "out")
    before = (out / "model.safetensors").read_bytes()
    real_rename = Path.rename

    def failing_rename(self: Path, target):
        if self.name == "out.tmp-export":
            raise OSError("simulated crash while renaming the new folder in")
        return real_rename(self, target)

    monkeypatch.setattr(export.Path, "rename", failing_rename)
    with pytest.raises(OSError, match="simulated"):
        export_checkpoint(fake_run, out, dtype="bfloat16", overwrite=True)
    assert (out / "model.safetensors").read_bytes() == before
    assert not (tmp_path / "out.old").exists() and not (tmp_path / "out.tmp-export").exists()


@pytest.mark.parametrize("which", ["actor", "ref"])
def test_bin_only_weights_say_how_to_fix(fake_run: Path, tmp_path: Path, which: str) -> None:
    run = tmp_path / "run"
    shutil.copytree(fake_run / "global_step_3", run / "global_step_3")
    folder = run / "global_step_3" / which
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"weights")
    with pytest.raises(CheckpointError, match=rf"{which}: only \.bin weights.*safe_serialization=True"):
        export_checkpoint(run / "global_step_3", tmp_path / "out", which=which)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.tmp-export").exists()


def test_cli(fake_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli"
    result = subprocess.run(
        [sys.executable, "-m", "corewarding.export", str(fake_run), "--out", str(out), "--which", "ref"],
        capture_output=True, text=True, cwd=REPO, check=True,
    )
    assert result.stdout.strip() == str(out)
    assert (out / "model.safetensors").is_file()
    bad = subprocess.run(
        [sys.executable, "-m", "corewarding.export", str(tmp_path / "nope"), "--out", str(tmp_path / "x")],
        capture_output=True, text=True, cwd=REPO,
    )
    assert bad.returncode != 0 and "no such file" in bad.stderr


@pytest.mark.parametrize("where", ["run", "parent", "actor", "inside"])
def test_out_overlapping_the_source_is_refused(fake_run: Path, tmp_path: Path, where: str) -> None:
    """--overwrite with --out equal to, above or inside the run would delete the checkpoint."""
    run = tmp_path / "runs" / "run"
    shutil.copytree(fake_run, run)
    before = sorted(str(p.relative_to(run)) for p in run.rglob("*"))
    out = {"run": run, "parent": run.parent, "actor": run / "global_step_3" / "actor", "inside": run / "exported"}[where]
    result = subprocess.run(
        [sys.executable, "-m", "corewarding.export", str(run), "--out", str(out), "--overwrite"],
        capture_output=True, text=True, cwd=REPO,
    )
    assert result.returncode != 0 and "overlaps the source" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert sorted(str(p.relative_to(run)) for p in run.rglob("*")) == before
