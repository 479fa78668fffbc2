# Two entry points for a fresh machine: `make test` and `make bench`.
# Both create (or refresh) .venv first; scripts/setup_env.sh is idempotent and pins the dev stack.
PY := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: env test test-fast bench lint clean balance-ab

env:
	@bash scripts/setup_env.sh

# On both cores (pytest-xdist). loadfile: a test module runs on one worker, so the module fixtures
# of an end-to-end module start each engine process once; modules are handed out in collection
# order, where tests/conftest.py puts the modules with slow tests first (no long tail).
XDIST ?= -n 2 --dist loadfile --no-loadscope-reorder

test: env
	$(PY) -m pytest -q $(XDIST) $(PYTEST_ARGS)

# Everything except the slow end-to-end tests.
test-fast: env
	$(PY) -m pytest -q $(XDIST) -m "not slow" $(PYTEST_ARGS)

# The quick kernel benchmark for $(BENCH_SKU): on this machine Triton's interpreter runs every kernel
# on the CPU (error against the torch references), the codegen report gives lowering status and UB
# use, and the cost model the modelled time (an NPU or `--backend cuda` adds measured figures).
# Writes out/bench/bench.{csv,json,md,png}. Extra flags: make bench BENCH_ARGS="--kernels rope".
BENCH_SKU ?= Ascend910B3
BENCH_ARGS ?=
bench: env
	.venv/bin/vat info
	.venv/bin/vat bench --sku $(BENCH_SKU) --quick --out out/bench $(BENCH_ARGS)

lint: env
	.venv/bin/lint-imports
	.venv/bin/ruff check vllm_ascend_triton tests
	.venv/bin/ruff format --check vllm_ascend_triton tests

# Balance mode against vLLM's DP prefill policies in the real engine (DP=2 API server on loopback,
# vLLM's own serving benchmark; MEASURED on this host, ~20 min on 2 cores). Writes $(AB_OUT)/ab.json.
AB_OUT ?= out/balance-ab
AB_ARGS ?= --reps 3 --num-prompts 150 --rate 2.5
balance-ab: env
	$(PY) benchmarks/engine_ab.py probe --out $(AB_OUT)
	$(PY) benchmarks/engine_ab.py ab --out $(AB_OUT) $(AB_ARGS)

clean:
	rm -rf .venv .pytest_cache
