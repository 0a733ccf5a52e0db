# Two commands on a fresh machine: `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# A CPU build of torch; pip takes it from the local wheel store on the dev/CI machine.
TORCH_PIN ?= torch==2.13.0

.PHONY: run test lint bench tiny clean

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_PIN)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

run: $(BIN)/.installed
	$(BIN)/python -m bot

test: $(BIN)/.installed
	$(BIN)/ruff check .
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

lint: $(BIN)/.installed
	$(BIN)/ruff check .

bench: $(BIN)/.installed
	HF_HUB_OFFLINE=1 $(BIN)/python -m bench

tiny: $(BIN)/.installed
	$(BIN)/python -m pipeline make-tiny .tiny-model

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
