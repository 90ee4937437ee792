PY := .venv/bin/python
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
export TOKENIZERS_PARALLELISM := false
export WANDB_MODE ?= offline

.PHONY: env lock-cpu lock-gpu test demo demo-i demo-iii replicate bench bench-step bench-memory bench-scaling bench-head gpu-check clean

# .venv exactly as requirements/cpu.lock says
env:
	bash scripts/setup_cpu_env.sh

# move the locks forward on purpose (resolve pyproject's ranges afresh), then make test and commit
lock-cpu:
	bash scripts/lock_cpu_env.sh

lock-gpu:
	bash scripts/lock_gpu_env.sh

# make test runs the vLLM tests or fails: tests/conftest.py turns a broken vllm into an error.
test: export COREWARDING_REQUIRE_VLLM := 1
test: env
	$(PY) -m pytest -q -ra --durations=15 $(PYTEST_ARGS)

demo: env
	$(PY) scripts/demo.py --method co_rewarding_ii

demo-i: env
	$(PY) scripts/demo.py --method co_rewarding_i

demo-iii: env
	$(PY) scripts/demo.py --method co_rewarding_iii

# six methods x three seeds, identical settings, about 95 minutes a seed on 2 CPU cores; resumes when
# run again; the three-seed table and figure go to figs/ (each seed's own to outputs/replication/seed<S>/figs)
replicate: env
	for seed in 0 1 2; do \
		$(PY) scripts/replicate.py --seed $$seed --out outputs/replication/seed$$seed \
			--figs outputs/replication/seed$$seed/figs || exit 1; \
	done
	$(PY) scripts/seed_table.py --root outputs/replication --seeds 0 1 2 --figs figs

bench: env
	$(PY) benchmarks/rollout.py

bench-step: env
	$(PY) benchmarks/step.py

bench-memory: env
	$(PY) benchmarks/memory.py --check

bench-scaling: env
	$(PY) benchmarks/scaling.py

bench-head: env
	$(PY) benchmarks/head.py

# on a CUDA machine with this package installed: the prepared check of the GPU path (docs/gpu.md)
gpu-check:
	python scripts/gpu_check.py --out outputs/gpu_check.json

clean:
	rm -rf .venv .pytest_cache outputs .cache
