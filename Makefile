# Two commands do all the set-up on a fresh machine:
#   make demo   # installs into .venv, then runs the INSR advection demo into runs/demo
#   make test   # installs into .venv, then runs the test suite
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-slow bench clean

$(STAMP): pyproject.toml scripts/setup.sh
	bash scripts/setup.sh $(VENV)
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/neuralnumerics run advection1d --steps 80 --out runs/demo --overwrite

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

bench: $(STAMP)
	$(BIN)/python benchmarks/insr_advection.py --quick

clean:
	rm -rf runs build dist src/*.egg-info
