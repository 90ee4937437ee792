"""The checkpoint layout's names, and its one rule for a run's latest checkpoint, which resume
(`trainer.checkpoint.latest_dir`) and export / eval (`export.resolve_step_dir`) both follow."""

from __future__ import annotations

from pathlib import Path

import pytest

from corewarding import checkpoint_layout as layout
from corewarding.export import resolve_step_dir
from corewarding.storage import CheckpointError
from corewarding.trainer.checkpoint import latest_dir


def _checkpoint(root: Path, step: int) -> Path:
    """A step folder as far as the latest rule looks (and export: it has actor/)."""
    folder = layout.step_dir(root, step)
    layout.actor_dir(folder).mkdir(parents=True)
    return folder


def _both(root: Path) -> tuple[object, object]:
    """What resume and export make of run folder `root`: a folder, or the error's text."""
    results = []
    for find in (latest_dir, resolve_step_dir):
        try:
            results.append(find(root))
        except CheckpointError as exc:
            results.append(str(exc))
    return results[0], results[1]


def test_names_round_trip(tmp_path):
    assert layout.step_dir(tmp_path, 7).name == "global_step_7"
    assert layout.parse_step("global_step_7") == 7
    assert layout.parse_step(layout.staging_dir(tmp_path, 7).name) is None
    assert layout.parse_step("global_step_x") is None and layout.parse_step("step_7") is None
    for step in (10, 2):
        _checkpoint(tmp_path, step)
    layout.staging_dir(tmp_path, 11).mkdir()
    assert layout.checkpoint_steps(tmp_path) == [2, 10]
    assert layout.step_folders(tmp_path) == [layout.step_dir(tmp_path, 2), layout.step_dir(tmp_path, 10)]
    assert layout.step_folders(tmp_path, staging=True)[-1] == layout.staging_dir(tmp_path, 11)
    assert layout.describe_steps([2, 10]) == "global_step_2 .. global_step_10"
    assert layout.optim_shard_file(tmp_path, 1) == tmp_path / "actor" / "optim" / "rank_1.safetensors"
    assert layout.rng_file(tmp_path, 0) == tmp_path / "rng" / "rank_0.json"


def test_the_latest_file_names_the_checkpoint_for_resume_and_export(tmp_path):
    for step in (2, 5):
        _checkpoint(tmp_path, step)
    (tmp_path / layout.LATEST_FILE).write_text("2\n")  # not the newest folder: the file decides
    assert _both(tmp_path) == (layout.step_dir(tmp_path, 2), layout.step_dir(tmp_path, 2))
    assert layout.latest_step_dir(tmp_path) == layout.step_dir(tmp_path, 2)


def test_a_missing_latest_file_beside_checkpoints_is_refused_by_resume_and_export(tmp_path):
    for step in (2, 5):
        _checkpoint(tmp_path, step)
    resume, export = _both(tmp_path)
    for text in (resume, export):
        assert isinstance(text, str), "a checkpoint was guessed without the latest file"
        assert f"{tmp_path} holds checkpoints (global_step_2 .. global_step_5) but no {layout.LATEST_FILE}" in text
        assert str(layout.step_dir(tmp_path, 5)) in text  # the folder to name instead
    assert "trainer.resume_from_path=" in resume  # resume adds how to name it in the config


def test_a_run_folder_without_checkpoints_has_none(tmp_path):
    layout.staging_dir(tmp_path, 1).mkdir()  # a first save that crashed: no checkpoint, no latest file
    assert latest_dir(tmp_path) is None and layout.latest_step_dir(tmp_path) is None
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        resolve_step_dir(tmp_path)


@pytest.mark.parametrize("text, error", [("x", "expected a step number"), ("9", "global_step_9, which does not exist")])
def test_a_bad_latest_file_is_refused_by_resume_and_export(tmp_path, text, error):
    _checkpoint(tmp_path, 2)
    (tmp_path / layout.LATEST_FILE).write_text(text)
    resume, export = _both(tmp_path)
    assert isinstance(resume, str) and isinstance(export, str)
    assert error in resume and error in export
