"""model_zoo's folder saves: whole or absent, never half-written, and built once by processes that want
the same folder together."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import pytest

from corewarding.model_zoo import build_once, save_model_folder


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


def _slow_build(out: Path) -> Path:
    """A build that takes long enough for a second process to ask meanwhile, and counts itself."""
    with open(out.parent / "builds.txt", "a") as log:
        log.write("built\n")
    time.sleep(0.5)
    return save_model_folder(FakeModel(), FakeTokenizer(), out)


def _want_the_folder(out: Path, ready: multiprocessing.synchronize.Barrier) -> None:
    ready.wait()
    assert (build_once(out, _slow_build) / "tokenizer.json").exists()


def test_two_processes_that_want_one_folder_build_it_once(tmp_path):
    fork = multiprocessing.get_context("fork")
    ready = fork.Barrier(2)
    procs = [fork.Process(target=_want_the_folder, args=(tmp_path / "model", ready)) for _ in range(2)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(30)
    assert [proc.exitcode for proc in procs] == [0, 0]
    assert (tmp_path / "builds.txt").read_text() == "built\n"
    assert build_once(tmp_path / "model", _slow_build) == tmp_path / "model"  # made: no third build
    assert (tmp_path / "builds.txt").read_text() == "built\n"
