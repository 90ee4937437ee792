"""The compiled output head's tests run where torch.compile can build on this machine (a C++ compiler
and Python's headers); elsewhere they are skipped with what is missing."""

from __future__ import annotations

import pytest

from corewarding.hardware import torch_compile_missing

MISSING = torch_compile_missing("cpu")
needs_compiler = pytest.mark.skipif(MISSING is not None, reason=f"torch.compile cannot build here: {MISSING}")
