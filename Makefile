# The two commands of the README, each doing its own set-up in a virtualenv (.venv).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.salaudit-installed

.PHONY: run test test-fast lint bench bench-gpu clean

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[test]"
	touch $(STAMP)

run: $(STAMP)  ## the main job on the embedded default
	$(VENV)/bin/salaudit audit

test: $(STAMP)  ## every test, slow ones included (what CI runs), in two test processes
	$(PY) -m pytest -n 2 --dist loadfile

test-fast: $(STAMP)  ## the everyday tier
	$(PY) -m pytest -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

bench: $(STAMP)
	$(PY) benchmarks/throughput.py
	$(PY) benchmarks/robust.py
	$(PY) benchmarks/audit_overhead.py
	$(PY) benchmarks/real_size.py --archs resnet18 --images 2

bench-gpu: $(STAMP)  ## the GPU checks in one command (needs CUDA; under 8 minutes)
	$(PY) benchmarks/gpu.py

clean:
	rm -rf $(VENV) runs
