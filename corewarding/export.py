"""Turn a saved training checkpoint into a plain HF folder (safetensors + config + tokenizer).

Checkpoint layout written by the trainer (its names: `corewarding.checkpoint_layout`)::

    <run_dir>/
      latest_checkpointed_iteration.txt      the step of the newest complete checkpoint
      global_step_N/
        actor/        HF folder of the policy (config.json, *.safetensors, tokenizer files)
        ref/          the reference model (the EMA teacher in Co-rewarding-II): model.safetensors
                      (or an HF folder of its own)
        ...           optimizer, scheduler, dataloader and RNG states (not exported)

`export_checkpoint(src, out_dir, which="actor")` accepts the run dir (its latest checkpoint, by the
rule resume follows: `checkpoint_layout.latest_step_dir`), a `global_step_N` dir or an HF folder and
writes a folder that `transformers.AutoModelForCausalLM.from_pretrained` and
`vllm.LLM(model=...)` load. Tensors are streamed file by file (never the whole model twice in
memory); a tied `lm_head.weight` that FSDP's full state dict carries is dropped, as
`save_pretrained` does.

    python -m corewarding.export checkpoints/co-rewarding/run1 --out exported/run1
    python -m corewarding.export checkpoints/co-rewarding/run1/global_step_40 --which ref --out exported/teacher
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from corewarding import checkpoint_layout as layout
from corewarding.storage import CheckpointError, replace_dir

WHICH = (layout.ACTOR_DIR, layout.REF_DIR)  # the policy, the reference / EMA teacher

# Everything of an HF folder that is not a weight file: config, generation config, tokenizer.
META_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "added_tokens.json",
)
# Prefixes that wrappers (FSDP1, DDP, torch.compile) put in front of parameter names.
WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "module.", "_orig_mod.")
DTYPES = ("float32", "bfloat16", "float16")


def is_hf_folder(path: Path) -> bool:
    if not (path / "config.json").is_file():
        return False
    return any(path.glob("*.safetensors")) or any(path.glob("pytorch_model*.bin"))


def resolve_step_dir(path: str | Path) -> Path:
    """A run dir (its latest checkpoint: `checkpoint_layout.latest_step_dir`, the rule resume
    follows) or a `global_step_N` dir -> the `global_step_N` dir."""
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    if layout.actor_dir(path).is_dir():
        return path
    step_dir = layout.latest_step_dir(path)
    if step_dir is None:
        raise CheckpointError(
            f"{path}: not a checkpoint: expected an HF folder (config.json + *.safetensors), a global_step_N "
            f"folder with actor/ in it, or a run folder with {layout.LATEST_FILE}"
        )
    if not layout.actor_dir(step_dir).is_dir():
        raise CheckpointError(f"{path / layout.LATEST_FILE} names {step_dir.name} but {layout.actor_dir(step_dir)} is missing")
    return step_dir


def resolve_model_path(path: str | Path) -> Path:
    """Any model argument -> an HF folder that transformers / vLLM can load directly.

    An HF folder is returned as it is; for a checkpoint (run dir or step dir) the policy's
    `global_step_N/actor/` folder. (The reference model has no config of its own: export it.)"""
    path = Path(path).expanduser()
    if path.is_dir() and is_hf_folder(path):
        return path
    actor = layout.actor_dir(resolve_step_dir(path))
    if not is_hf_folder(actor):
        raise CheckpointError(f"{actor}: expected an HF folder (config.json + *.safetensors)")
    return actor


def _weight_files(folder: Path) -> list[Path]:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{folder}: no *.safetensors weight file")
    return files


def _clean_name(name: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name, changed = name[len(prefix) :], True
    return name.replace("._fsdp_wrapped_module", "").replace("._orig_mod", "")


def _copy_meta(src: Path, out: Path) -> None:
    for name in META_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, out / name)
    if not (out / "config.json").is_file():
        raise CheckpointError(f"{src}: no config.json")


def _write_weights(weight_files: list[Path], out: Path, tied: bool, dtype: str | None) -> list[str]:
    """Stream tensors file by file into out/; returns the output file names."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    target = getattr(torch, dtype) if dtype else None
    names: list[str] = []
    index: dict[str, str] = {}
    total_size = 0
    multi = len(weight_files) > 1
    for number, path in enumerate(weight_files, start=1):
        tensors = {}
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():
                name = _clean_name(key)
                if tied and name == "lm_head.weight":
                    continue
                tensor = handle.get_tensor(key)
                if target is not None and tensor.is_floating_point():
                    tensor = tensor.to(target)
                tensors[name] = tensor.contiguous()
        if not tensors:
            continue
        file_name = f"model-{number:05d}-of-{len(weight_files):05d}.safetensors" if multi else "model.safetensors"
        save_file(tensors, str(out / file_name), metadata={"format": "pt"})
        names.append(file_name)
        for name, tensor in tensors.items():
            index[name] = file_name
            total_size += tensor.numel() * tensor.element_size()
        del tensors
    if not names:
        raise CheckpointError(f"no tensors in {[str(p) for p in weight_files]}")
    if len(names) > 1:
        (out / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total_size}, "weight_map": dict(sorted(index.items()))}, indent=2)
        )
    elif names[0] != "model.safetensors":
        (out / names[0]).rename(out / "model.safetensors")
        names = ["model.safetensors"]
    return names


def _refuse_overlap(out: Path, sources: list[Path]) -> None:
    """`out` is replaced as a whole: it must not be, hold, or sit inside a folder the export reads."""
    target = out.resolve()
    for source in sources:
        source = source.resolve()
        if target == source or target in source.parents or source in target.parents:
            raise CheckpointError(
                f"--out {out} overlaps the source {source}: writing it would delete the checkpoint; "
                "choose an output folder outside the run"
            )


def _check_request(which: str, dtype: str | None, out: Path, overwrite: bool) -> None:
    if which not in WHICH:
        raise CheckpointError(f"which must be 'actor' or 'ref', got {which!r}")
    if dtype is not None and dtype not in DTYPES:
        raise CheckpointError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise CheckpointError(f"{out} exists and is not empty (pass overwrite=True / --overwrite)")


def _source_folders(src: Path, which: str) -> tuple[Path, Path]:
    """(the folder with the config and tokenizer, the folder with the weights) of what to export."""
    if src.is_dir() and is_hf_folder(src) and not layout.actor_dir(src).is_dir():
        if which == layout.REF_DIR:
            raise CheckpointError(f"{src} is an HF folder, not a checkpoint: it has no reference model")
        return src, src
    step_dir = resolve_step_dir(src)
    meta_dir = layout.actor_dir(step_dir)
    weight_dir = step_dir / which
    if not weight_dir.is_dir():
        state_file = layout.optim_dir(step_dir) / layout.OPTIM_STATE_FILE
        state = json.loads(state_file.read_text()) if state_file.is_file() else {}
        if which == layout.REF_DIR and state.get("ref_saved") is False:
            raise CheckpointError(f"{step_dir}: the reference never moved from the model it started from, so it "
                                  f"was not saved: use that model folder ({state.get('model_path')}) itself")
        raise CheckpointError(f"{step_dir}: no {which}/ folder")
    if which == layout.REF_DIR and (weight_dir / "config.json").is_file():
        meta_dir = weight_dir  # a ref saved as a full HF folder brings its own config
    return meta_dir, weight_dir


def _refuse_bin_only(weight_dir: Path) -> None:
    if any(weight_dir.glob("*.bin")) and not any(weight_dir.glob("*.safetensors")):
        raise CheckpointError(
            f"{weight_dir}: only .bin weights, and export reads *.safetensors; re-save them with "
            "`save_pretrained(..., safe_serialization=True)` or `safetensors.torch.save_file(torch.load(BIN), "
            f"'{weight_dir}/model.safetensors')`"
        )


def _write_folder(meta_dir: Path, weight_dir: Path, out: Path, dtype: str | None) -> None:
    """The HF folder, written to a temp sibling of `out` and swapped in by renames."""
    config = json.loads((meta_dir / "config.json").read_text())
    tied = bool(config.get("tie_word_embeddings", False))
    tmp = out.with_name(out.name + ".tmp-export")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        _copy_meta(meta_dir, tmp)
        _write_weights(_weight_files(weight_dir), tmp, tied, dtype)
        if dtype is not None:
            config["torch_dtype"] = dtype
            if "dtype" in config:
                config["dtype"] = dtype
            (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def export_checkpoint(
    src: str | Path,
    out_dir: str | Path,
    which: str = "actor",
    dtype: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a plain HF folder for the policy (`which="actor"`) or the reference / EMA teacher
    (`which="ref"`) of a checkpoint. `src` is a run dir, a `global_step_N` dir or (actor only) an
    HF folder. `dtype` (float32 | bfloat16 | float16) casts floating-point weights; None keeps them.
    The folder is written to a temp sibling and swapped in by renames (`replace_dir`), so a crash
    never leaves half a model at `out_dir`; an `out_dir` that is, holds or sits inside a source
    folder is refused (replacing it would delete the checkpoint)."""
    src = Path(src).expanduser()
    out = Path(out_dir).expanduser()
    _check_request(which, dtype, out, overwrite)
    meta_dir, weight_dir = _source_folders(src, which)
    _refuse_bin_only(weight_dir)
    _refuse_overlap(out, [src, meta_dir, weight_dir])
    _write_folder(meta_dir, weight_dir, out, dtype)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m corewarding.export",
        description="Export a training checkpoint (run dir or global_step_N dir) as a plain HF folder "
        "(safetensors + config + tokenizer) that transformers and vLLM load.",
    )
    parser.add_argument("src", help="run dir (uses latest_checkpointed_iteration.txt), global_step_N dir, or HF folder")
    parser.add_argument("--out", "--out_dir", dest="out", required=True, help="output folder")
    parser.add_argument("--which", choices=WHICH, default=layout.ACTOR_DIR, help="policy (actor) or reference / EMA teacher (ref)")
    parser.add_argument("--dtype", choices=DTYPES, default=None, help="cast floating-point weights (default: keep)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    args = parser.parse_args(argv)
    try:
        out = export_checkpoint(args.src, args.out, which=args.which, dtype=args.dtype, overwrite=args.overwrite)
    except CheckpointError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(out)


if __name__ == "__main__":
    main()
