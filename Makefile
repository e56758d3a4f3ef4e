# The README's two commands: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1

.PHONY: install demo test test-slow lint bench serve chromium clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[ml,hf,service,dev,ray]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/backbone-rank demo

# ruff, then mypy (estimators and service: [tool.mypy] in pyproject.toml), then the import contracts ([tool.importlinter])
lint: $(STAMP)
	$(BIN)/ruff check estimators service tests benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports

test: $(STAMP) lint chromium
	$(BIN)/python -m pytest

# The report tests render pages in a real headless browser (Debian's chromium); installed once, when absent.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
		SUDO=$$( [ "$$(id -u)" -eq 0 ] || echo sudo ); \
		$$SUDO apt-get update -q && $$SUDO apt-get install -y -q chromium; }

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow

serve: $(STAMP)
	$(BIN)/backbone-rank serve

# Results go to <cache dir>/benchmarks (untracked); `make bench-record` writes them into benchmarks/results
# (the recorded, tracked files: commit them with the README's numbers).
bench: $(STAMP)
	$(BIN)/python benchmarks/speed_estimators.py

.PHONY: bench-record
bench-record: $(STAMP)
	$(BIN)/python benchmarks/speed_estimators.py --out benchmarks/results

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache .import_linter_cache *.egg-info
