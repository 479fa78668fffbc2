# Two entry points for a fresh machine: `make test` and `make bench`.
# Both create (or refresh) .venv first; scripts/setup_env.sh is idempotent and pins the dev stack.
PY := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: env test test-fast bench lint clean

env:
	@bash scripts/setup_env.sh

test: env
	$(PY) -m pytest -q $(PYTEST_ARGS)

# Everything except the slow end-to-end tests.
test-fast: env
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

bench: env
	.venv/bin/vat info
	.venv/bin/vat check
	.venv/bin/vat compile --sku Ascend910B3

lint: env
	.venv/bin/ruff check vllm_ascend_triton tests
	.venv/bin/ruff format --check vllm_ascend_triton tests

clean:
	rm -rf .venv .pytest_cache
