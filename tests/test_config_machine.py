"""What a run decides from the machine and the cluster it starts on: bfloat16 and torch.compile
from the CPU, Ray's token authentication and loopback rendezvous, the cluster's devices, one
in-process worker."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from corewarding.config import compose_config, load_config
from config_overrides import NO_PATHS, REPO, base
from config_overrides import data, model  # fixture


@pytest.mark.parametrize("native, expected", [(True, "bfloat16"), (False, "float32")])
def test_auto_dtype_is_bfloat16_on_a_cpu_that_multiplies_it_natively(model, data, monkeypatch, native, expected):
    import corewarding.hardware

    monkeypatch.setattr(corewarding.hardware, "native_bf16_cpu", lambda: native)
    cfg = load_config(compose_config([*base(model, data, "majority_voting"), "actor_rollout_ref.model.dtype=auto"]))
    assert cfg.actor_rollout_ref.model.dtype == expected and cfg.actor_rollout_ref.rollout.dtype == expected
    plain = load_config(compose_config(base(model, data, "majority_voting")))
    assert plain.actor_rollout_ref.model.dtype == "float32"  # null stays the float32 reference on CPU


def test_torch_compile_is_used_where_the_machine_can_compile_and_said_off_elsewhere(monkeypatch, caplog):
    """actor.use_torch_compile (verl's key) stays as asked in the configuration; each worker decides on
    its own node (usable_torch_compile): on a CPU without a C++ compiler it runs uncompiled and its log
    says why and what is missing."""
    from corewarding.hardware import torch_compile_missing, usable_torch_compile

    overrides = NO_PATHS + ["actor_rollout_ref.actor.use_torch_compile=True"]
    assert load_config(compose_config(overrides), check_paths=False).actor_rollout_ref.actor.use_torch_compile is True
    assert load_config(compose_config(NO_PATHS), check_paths=False).actor_rollout_ref.actor.use_torch_compile is False
    assert usable_torch_compile(True, "cpu") is (torch_compile_missing("cpu") is None)
    assert usable_torch_compile(False, "cpu") is False
    monkeypatch.setenv("CXX", "no-such-compiler++")
    with caplog.at_level("WARNING"):
        assert usable_torch_compile(True, "cpu") is False
    assert "use_torch_compile=True: no C++ compiler (no-such-compiler++) on PATH, so the output head runs uncompiled" in caplog.text


def test_cpu_flags_say_which_processors_multiply_bfloat16(tmp_path):
    from corewarding.hardware import cpu_flags, native_bf16_cpu

    zen4 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n"
    icelake = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_vnni\n"
    sapphire = "flags\t\t: avx512f amx_bf16 amx_tile\n"
    graviton3 = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"
    assert "avx512_bf16" in cpu_flags(zen4) and cpu_flags("no flags here") == frozenset()
    for text, native in ((zen4, True), (icelake, False), (sapphire, True), (graviton3, True)):
        path = tmp_path / f"cpuinfo-{native}-{len(text)}"
        path.write_text(text)
        assert native_bf16_cpu(str(path)) is native, text
    assert native_bf16_cpu(str(tmp_path / "absent")) is False


def test_the_machine_record_names_the_processor(tmp_path):
    from corewarding.hardware import cpu_model, describe_machine

    zen4 = "processor\t: 0\nmodel name\t: AMD EPYC 9R14 96-Core Processor\nflags\t\t: fpu avx512_bf16\n"
    assert cpu_model(zen4) == "AMD EPYC 9R14 96-Core Processor" and cpu_model("no model here") == "unknown"
    path = tmp_path / "cpuinfo"
    path.write_text(zen4)
    assert describe_machine(str(path)) == {"cpu": "AMD EPYC 9R14 96-Core Processor", "cores": os.cpu_count(),
                                           "bfloat16": True}
    assert describe_machine(str(tmp_path / "absent"))["cpu"] == "unknown"


@pytest.mark.parametrize(
    "device, address, auth_mode, node_ip",
    [("cpu", None, "disabled", "127.0.0.1"),  # a local CPU run: no token, loopback only
     ("cuda", None, None, "127.0.0.1"),  # a local GPU run: Ray's token authentication stays on, loopback
     ("cuda", "auto", None, None)],  # joining a cluster: whatever its nodes were started with
)
def test_init_ray_keeps_token_auth_off_cpu(device, address, auth_mode, node_ip, monkeypatch):
    import types

    from corewarding.trainer.run import init_ray

    calls = []
    fake = types.SimpleNamespace(is_initialized=lambda: False,
                                 init=lambda **kw: calls.append((kw, os.environ.get("RAY_AUTH_MODE"))))
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    cfg = load_config(compose_config(NO_PATHS + [f"trainer.device={device}", f"ray_init.address={address or 'null'}"]),
                      check_paths=False)
    assert init_ray(cfg) is True
    (kwargs, mode), = calls
    assert mode == auth_mode and kwargs.get("_node_ip_address") == node_ip
    assert kwargs.get("runtime_env", {}).get("env_vars", {}).get("RAY_AUTH_MODE") == auth_mode


def test_worker_rendezvous_on_loopback_unless_a_cluster():
    from corewarding.workers.group import uses_loopback

    def config(*overrides: str):
        return load_config(compose_config(NO_PATHS + ["trainer.device=cuda", *overrides]), check_paths=False)

    assert uses_loopback(config())
    assert not uses_loopback(config("ray_init.address=auto"))
    assert not uses_loopback(config("trainer.nnodes=2", "ray_init.address=auto"))


def test_the_entry_point_does_not_switch_off_ray_auth():
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}
    code = "import os, corewarding.main; print(os.environ.get('RAY_AUTH_MODE'))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "None"


def test_device_of_a_cluster_run_is_stated_and_checked_against_the_cluster(caplog):
    """A driver on a CPU-only head node cannot resolve trainer.device=auto for the cluster; a GPU run
    on a cluster without GPUs is refused at once, not after the placement timeout."""
    from corewarding.config import ConfigError
    from corewarding.trainer.run import check_cluster_devices

    with pytest.raises(ConfigError, match="trainer.device=auto cannot be decided by the driver of a cluster run"):
        load_config(compose_config(NO_PATHS + ["trainer.device=auto", "ray_init.address=auto"]), check_paths=False)
    gpu = load_config(compose_config(NO_PATHS + ["trainer.device=cuda", "ray_init.address=auto"]), check_paths=False)
    with pytest.raises(ConfigError, match="trainer.device=cuda but the Ray cluster has no GPUs"):
        check_cluster_devices(gpu, {"CPU": 64.0})
    check_cluster_devices(gpu, {"CPU": 64.0, "GPU": 8.0})
    cpu = load_config(compose_config(NO_PATHS + ["trainer.device=cpu", "ray_init.address=auto"]), check_paths=False)
    with caplog.at_level("WARNING"):
        check_cluster_devices(cpu, {"CPU": 64.0, "GPU": 8.0})
    assert "set trainer.device=cuda to use the GPUs" in caplog.text


def test_single_process_needs_one_worker():
    from corewarding.config import ConfigError

    with pytest.raises(ConfigError, match="trainer.single_process=True runs one worker: set trainer.nnodes=1 and "
                                          "trainer.n_gpus_per_node=1 \\(have 1 x 2\\)"):
        load_config(compose_config(NO_PATHS + ["trainer.single_process=True"]), check_paths=False)
    one = load_config(compose_config(NO_PATHS + ["trainer.single_process=True", "trainer.n_gpus_per_node=1",
                                                 "data.train_batch_size=2", "actor_rollout_ref.actor.ppo_mini_batch_size=2"]),
                      check_paths=False)
    assert one.trainer.single_process and one.trainer.world_size == 1
