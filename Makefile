# The README's commands. Each (re)creates .venv idempotently before running.
PY := .venv/bin/python

.PHONY: setup demo test bench clean
setup:
	bash tools/setup_env.sh

demo: setup
	$(PY) tools/demo.py

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) tools/benchmark.py

clean:
	rm -rf output .pytest_cache
