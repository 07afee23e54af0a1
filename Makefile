# The README's commands. Each (re)creates .venv idempotently before running.
PY := .venv/bin/python

.PHONY: setup demo test lint bench clean
setup:
	bash tools/setup_env.sh

demo: setup
	$(PY) tools/demo.py

test: setup
	$(PY) -m pytest -q --durations=25

# The lint gate (ruff.toml): the same checks CI runs before the tests.
lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# The benchmark preset: the full table where CUDA is present, else what the levers buy on this
# CPU (R50x1 and peers at 128 px, one thread). Override with BENCH_CONFIG=benchmark/cpu_tiny.yaml.
BENCH_CONFIG ?= $(shell $(PY) -c "import torch; print('benchmark/h100.yaml' if torch.cuda.is_available() else 'benchmark/cpu_levers.yaml')")

bench: setup
	$(PY) tools/benchmark.py --config-file $(BENCH_CONFIG)

clean:
	rm -rf output .pytest_cache
