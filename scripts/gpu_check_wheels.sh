#!/usr/bin/env bash
# The wheels scripts/gpu_check.py needs on a GPU machine that has torch and transformers but not the
# configuration and answer-checking libraries (the lent test machine: Python 3.12): into .whl/,
# versions from requirements/cpu.lock. antlr4 4.9.3 has no wheel on PyPI: built here (pure Python).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
pinned() { grep -i "^$1==" requirements/cpu.lock; }
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl \
    "$(pinned hydra-core)" "$(pinned omegaconf)" "$(pinned math-verify)" "$(pinned latex2sympy2_extended)" \
    "$(pinned transformers)"
python3 -m pip wheel -q --no-deps -w .whl "$(pinned antlr4-python3-runtime)"
ls .whl
