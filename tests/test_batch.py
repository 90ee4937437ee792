"""The Batch container: rows stay aligned through every operation."""

from __future__ import annotations

import pytest
import torch

from corewarding.batch import Batch


def make(n: int = 4) -> Batch:
    return Batch(
        tensors={"x": torch.arange(n), "m": torch.arange(2 * n).reshape(n, 2)},
        rows={"uid": [f"u{i}" for i in range(n)]},
    )


def test_construction_and_access():
    b = make()
    assert len(b) == 4 and "x" in b and "uid" in b and "nope" not in b
    assert b["uid"] == ["u0", "u1", "u2", "u3"]
    assert torch.equal(b["x"], torch.arange(4))
    assert len(Batch()) == 0
    assert len(Batch(rows={"a": [1, 2]})) == 2
    with pytest.raises(KeyError, match="nope"):
        b["nope"]
    with pytest.raises(ValueError, match="row counts"):
        Batch(tensors={"x": torch.zeros(3)}, rows={"uid": [1, 2]})
    rows = ["a", "b"]
    assert Batch(rows={"r": rows}).rows["r"] is not rows  # rows are copied


def test_select_reorders_and_duplicates():
    b = make()
    s = b.select([2, 0, 2])
    assert s["uid"] == ["u2", "u0", "u2"]
    assert s["x"].tolist() == [2, 0, 2]
    assert s["m"].tolist() == [[4, 5], [0, 1], [4, 5]]
    assert b.select(torch.tensor([1])).rows["uid"] == ["u1"]
    assert len(b.select([])) == 0


def test_split_and_chunk():
    b = make(5)
    pieces = b.split(2)
    assert [p["uid"] for p in pieces] == [["u0", "u1"], ["u2", "u3"], ["u4"]]
    assert [p["x"].tolist() for p in pieces] == [[0, 1], [2, 3], [4]]
    with pytest.raises(ValueError, match="positive"):
        b.split(0)
    assert [len(c) for c in make(6).chunk(3)] == [2, 2, 2]
    assert make(6).chunk(3)[1]["uid"] == ["u2", "u3"]
    with pytest.raises(ValueError, match="equal chunks"):
        b.chunk(2)
    with pytest.raises(ValueError, match="positive"):
        b.chunk(0)
    empty = make(0).chunk(2)  # an empty batch gives empty chunks (it used to hit split(0))
    assert [len(c) for c in empty] == [0, 0] and empty[0]["m"].shape == (0, 2)


def test_concat_is_the_inverse_of_split():
    b = make(5)
    back = Batch.concat(b.split(2))
    assert back["uid"] == b["uid"] and torch.equal(back["m"], b["m"])
    assert len(Batch.concat([])) == 0
    with pytest.raises(ValueError, match="different fields"):
        Batch.concat([make(2), Batch(rows={"uid": ["a"]})])


def test_repeat_interleave():
    b = make(2).repeat_interleave(3)
    assert b["uid"] == ["u0"] * 3 + ["u1"] * 3
    assert b["x"].tolist() == [0, 0, 0, 1, 1, 1]


def test_subset():
    b = make(3)
    p = b.subset(["x", "uid"])
    assert set(p.tensors) == {"x"} and set(p.rows) == {"uid"}
    assert set(b.tensors) == {"x", "m"} and set(b.rows) == {"uid"}  # nothing removed from the source
    assert not hasattr(b, "pop")  # renamed: it never removed anything
    with pytest.raises(KeyError, match="nope"):
        b.subset(["x", "nope"])


def test_to_keeps_everything():
    b = make(2).to("cpu")
    assert b["uid"] == ["u0", "u1"] and b["x"].device.type == "cpu"
