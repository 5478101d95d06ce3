# Quick start: `make serve` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: serve test test-sqlite bench install clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)
	$(BIN)/flagship serve

# The whole suite, against SQLite and PostgreSQL (FLAGSHIP_TEST_POSTGRES_URL).
test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadgroup

test-sqlite: $(STAMP)
	FLAGSHIP_TEST_BACKENDS=sqlite $(BIN)/python -m pytest -n 2 --dist loadgroup

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) *.egg-info
