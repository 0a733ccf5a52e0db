# Two commands on a fresh machine: `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# A CPU build of torch; pip takes it from the local wheel store on the dev/CI machine.
# torch is installed apart and first; everything else comes from the lock (docs/development.md).
TORCH_PIN ?= torch==2.13.0
LOCKS := requirements/runtime.lock requirements/dev.lock

.PHONY: run test lint bench tiny clean lock

# Syncs .venv to the lock: exactly the locked versions (hashes checked), anything else removed.
$(BIN)/.installed: $(LOCKS) tools/lock.py
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_PIN)"
	$(BIN)/pip install -q --no-deps -e .
	$(BIN)/python tools/lock.py sync $(LOCKS)
	touch $@

# Re-resolve pyproject.toml's ranges into the lock (uv, Linux and macOS); then make test, make bench, commit.
lock: $(BIN)/.installed
	$(BIN)/python tools/lock.py compile --torch "$(TORCH_PIN)"

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
