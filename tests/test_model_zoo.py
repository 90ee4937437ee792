"""model_zoo's folder saves: whole or absent, never half-written."""

from __future__ import annotations

from pathlib import Path

import pytest

from corewarding.model_zoo import save_model_folder


class FakeModel:
    def save_pretrained(self, path: Path, safe_serialization: bool) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "config.json").write_text("{}")
        (Path(path) / "model.safetensors").write_bytes(b"weights")


class FakeTokenizer:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail

    def save_pretrained(self, path: Path) -> None:
        if self.fail:
            raise KeyboardInterrupt("killed while saving the tokenizer")
        (Path(path) / "tokenizer.json").write_text("{}")


def test_a_save_writes_the_whole_folder_and_no_leftovers(tmp_path):
    out = save_model_folder(FakeModel(), FakeTokenizer(), tmp_path / "model")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_a_killed_save_leaves_no_folder_a_later_run_would_take_for_whole(tmp_path):
    out = tmp_path / "model"
    with pytest.raises(KeyboardInterrupt):
        save_model_folder(FakeModel(), FakeTokenizer(fail=True), out)
    assert not out.exists()  # the callers skip the save when out/config.json exists
    save_model_folder(FakeModel(), FakeTokenizer(), out)  # the next run redoes it, over the leftover .tmp
    assert (out / "tokenizer.json").exists() and not out.with_name("model.tmp").exists()


def test_a_save_replaces_an_incomplete_folder(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "config.json").write_text("stale")
    save_model_folder(FakeModel(), FakeTokenizer(), out)
    assert (out / "config.json").read_text() == "{}" and (out / "tokenizer.json").exists()
