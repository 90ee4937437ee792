#!/usr/bin/env bash
# Regenerate requirements/gpu.lock, one set of versions for GPU nodes (CUDA torch, vLLM, Ray,
# transformers and the rest) that resolve together: pip resolves `.[gpu,hub,eval]` for Linux x86-64 and
# this Python without installing anything (no GPU needed), and the lock records every package.
# flash-attn is built on the node against the locked torch (install_env.sh pins its version); its one
# dependency besides torch, einops, is resolved here.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
python3 -m venv "$WORK/venv"
PIP="$WORK/venv/bin/python -m pip"
$PIP install -q --upgrade pip
# Resolve against the package index alone: a local folder of CPU wheels (find-links in a pip config)
# would hand back torch's CPU build, which satisfies vllm's torch==2.13.0 pin.
env -u PIP_FIND_LINKS -u PIP_CONSTRAINT PIP_CONFIG_FILE=/dev/null \
    $PIP install --dry-run --ignore-installed --quiet --report "$WORK/report.json" ".[gpu,hub,eval]" einops
"$WORK/venv/bin/python" - "$WORK/report.json" <<'PY'
import json, platform, sys, datetime
report = json.load(open(sys.argv[1]))
pins = sorted((p["metadata"]["name"], p["metadata"]["version"]) for p in report["install"] if p["metadata"]["name"] != "corewarding")
torch = dict(pins)["torch"]
assert "+cpu" not in torch, f"resolved torch {torch}: the CPU build, not CUDA"
with open("requirements/gpu.lock", "w") as out:
    out.write(f"# GPU nodes (Linux x86-64, Python {platform.python_version()}): install_env.sh installs exactly this.\n")
    out.write(f"# Resolved by scripts/lock_gpu_env.sh on {datetime.date.today()} (pip --dry-run, no GPU involved).\n")
    out.writelines(f"{name}=={version}\n" for name, version in sorted(pins, key=lambda p: p[0].lower()))
print(f"wrote requirements/gpu.lock ({len(pins)} packages, torch {torch})")
PY
