"""The registry of rollout engines (`corewarding.rollout_engines`) is the one place that knows engine
names: the config admits its names, its capabilities drive the config checks, the memory plan and
eval's defaults, and `make_engine` builds whatever entry it holds."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path
from types import SimpleNamespace

import pytest

from corewarding import rollout_engines
from corewarding.config import ConfigError, compose_config, load_config
from corewarding.rollout_engines import ENGINE_NAMES, ENGINES, EngineSpec, EngineUnavailable, UnknownEngine
from corewarding.workers.rollout import EngineSettings, make_engine

PACKAGE = Path(rollout_engines.__file__).resolve().parent
NO_PATHS = ["trainer.device=cpu", "actor_rollout_ref.rollout.name=hf", "trainer.n_gpus_per_node=2",
            "data.train_batch_size=4", "actor_rollout_ref.actor.ppo_mini_batch_size=4",
            "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2", "actor_rollout_ref.rollout.n=2"]
# lm-evaluation-harness names its own model backends "vllm" and "hf" (`--lm_eval_backend`): not ours
NOT_OUR_ENGINES = {PACKAGE / "rollout_engines.py", PACKAGE / "eval" / "harness.py"}
ENGINE_SHARE = 0.5  # ppo_trainer.yaml's actor_rollout_ref.rollout.gpu_memory_utilization


def _load(*overrides: str):
    return load_config(compose_config(NO_PATHS + list(overrides)), check_paths=False)


def _with(monkeypatch, name: str, **capabilities: bool) -> None:
    """Give the registered engine `name` other capabilities for one test."""
    monkeypatch.setitem(ENGINES, name, dataclasses.replace(ENGINES[name], **capabilities))


def test_unknown_engine_names_the_key_and_the_registered_engines():
    with pytest.raises(ConfigError) as info:
        _load("actor_rollout_ref.rollout.name=sglang")
    assert str(info.value) == f"actor_rollout_ref.rollout.name='sglang' is not one of {list(ENGINE_NAMES)}"
    with pytest.raises(UnknownEngine, match=f"unknown rollout engine 'sglang'; allowed: {', '.join(ENGINE_NAMES)}"):
        make_engine(EngineSettings(name="sglang", max_model_len=8), "/m", None, "cpu")


def test_capabilities_drive_the_config_checks(monkeypatch):
    """Rollout correction needs an engine with the sampler's log-probs, tensor parallel an engine
    that has it (on GPUs): the checks read the entry, not the name."""
    with pytest.raises(ConfigError, match="rollout_is=token needs the sampler's log-probs: use actor_rollout_ref.rollout.name=vllm "
                                          r"\(the hf engine does not return them\)"):
        _load("algorithm.rollout_correction.rollout_is=token")
    _with(monkeypatch, "hf", sampler_log_probs=True)
    assert _load("algorithm.rollout_correction.rollout_is=token").algorithm.rollout_correction.rollout_is == "token"
    with pytest.raises(ConfigError, match="tensor_model_parallel_size=2 needs rollout.name=vllm on GPUs"):
        _load("actor_rollout_ref.rollout.tensor_model_parallel_size=2", "trainer.device=cuda")
    _with(monkeypatch, "hf", tensor_parallel=True)
    config = _load("actor_rollout_ref.rollout.tensor_model_parallel_size=2", "trainer.device=cuda")
    assert config.actor_rollout_ref.rollout.tensor_model_parallel_size == 2


def test_a_missing_package_is_named_with_how_to_install_it(monkeypatch):
    monkeypatch.setitem(ENGINES, "hf", dataclasses.replace(ENGINES["hf"], package="no_such_package_here", install="pip install it"))
    with pytest.raises(ConfigError, match=r"rollout.name=hf: the hf engine needs the no_such_package_here package, which is "
                                          r"not installed \(pip install it\); or set actor_rollout_ref.rollout.name=vllm"):
        _load()
    with pytest.raises(EngineUnavailable, match="no_such_package_here"):
        make_engine(EngineSettings(name="hf", max_model_len=8), "/m", None, "cpu")


def test_memory_plan_counts_the_share_of_an_engine_that_takes_one(monkeypatch):
    from corewarding.workers import memory_plan

    def settings(*overrides: str) -> memory_plan.Settings:
        return memory_plan.settings_of(_load("trainer.device=cuda", *overrides), 2, 80)

    assert (settings().vllm_share, settings().sleeps) == (0.0, False)  # hf: no share, nothing to free
    _with(monkeypatch, "hf", memory_share=True, sleeps=True)
    assert (settings().vllm_share, settings().sleeps) == (ENGINE_SHARE, True)
    assert settings("actor_rollout_ref.rollout.free_cache_engine=false").sleeps is False


built: list[tuple[EngineSettings, str, str]] = []


def build(settings: EngineSettings, model_path: str, tokenizer, device) -> SimpleNamespace:
    """The `build` of the scripted engine registered below (this test module is its module)."""
    built.append((settings, model_path, str(device)))
    return SimpleNamespace(name=settings.name)


def test_adding_an_engine_is_one_registry_entry_and_its_module(monkeypatch):
    monkeypatch.setitem(ENGINES, "scripted", EngineSpec(name="scripted", module=__name__, package="torch",
                                                        install="pip install torch", continuous_batching=True))
    engine = make_engine(EngineSettings(name="scripted", max_model_len=8), "/m", None, "cpu")
    assert engine.name == "scripted" and built[-1][1:] == ("/m", "cpu")
    assert rollout_engines.engines_that("continuous_batching") == ("vllm", "scripted")


def test_eval_defaults_follow_the_capabilities(monkeypatch):
    from corewarding.eval import EvalError, cli

    def checked(*argv: str):
        args = cli.build_parser().parse_args(["--model", "m", "--backend", "hf", *argv])
        cli.check_arguments(args)
        return args

    assert checked().batch_size == 8
    with pytest.raises(EvalError, match="--tensor_parallel_size > 1 needs --backend vllm"):
        checked("--tensor_parallel_size", "2")
    _with(monkeypatch, "hf", continuous_batching=True, tensor_parallel=True)
    assert checked("--tensor_parallel_size", "2").batch_size == 256
    assert cli.build_parser().parse_args(["--model", "m"]).backend in ENGINE_NAMES


def test_no_module_but_the_registry_compares_engine_names():
    """`name == "vllm"` anywhere else would bypass the registry's capabilities."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path in NOT_OUR_ENGINES:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Compare):
                names = [c.value for c in ast.walk(node) if isinstance(c, ast.Constant) and c.value in ENGINE_NAMES]
                found += [f"{path.relative_to(PACKAGE.parent)}:{node.lineno} compares with {name!r}" for name in names]
    assert not found, "\n".join(found)
