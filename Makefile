# Experiment tracking and hyperparameter search pipeline. `make help` lists the targets.
# Overrides pass through ARGS, e.g. make pipeline ARGS="data=digits tune.n_trials=30"

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
ARGS ?=
# The CPU build of torch that lies on these machines; GPU users: make install TORCH_SPEC=torch TORCH_INDEX=
TORCH_SPEC ?= torch==2.13.0
# An extra index for torch, e.g. https://download.pytorch.org/whl/cpu on a CI runner
TORCH_INDEX ?=
TRACKING_URI ?= sqlite:///$(CURDIR)/mlflow.db
UI_PORT ?= 5000
SERVE_PORT ?= 5001
SERVER_PORT ?= 5050
DASHBOARD_PORT ?= 8080
N_TRIALS ?= 24
WORKERS ?= 2
INPUT ?=
OUTPUT ?= predictions.csv
RUN ?=
PYTEST_ARGS ?=
# test processes; each takes whole files, so a file's shared fixtures are built once (--dist loadfile)
TEST_WORKERS ?= 2
# the tests' temp folders (thousands of small SQLite commits): memory-backed /dev/shm when it has
# 4 GB free, else the system's; only a failed test's folder is kept (pyproject.toml); looked up
# only by the test targets
TEST_TMP ?= $(shell df -Pk /dev/shm 2>/dev/null | awk 'NR == 2 && $$4 > 4000000 {print "/dev/shm"}')
TEST_ENV = $(if $(TEST_TMP),PYTEST_DEBUG_TEMPROOT=$(TEST_TMP))

.DEFAULT_GOAL := help
.PHONY: help install pipeline prepare tune train evaluate register test test-fast lint format ui \
	sweep sweep-worker dashboard serve predict dockerfile server server-stop reproduce report bench clean clean-store

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(PY):
	$(PYTHON) -m venv $(VENV)

install: $(PY) ## create .venv and install the project with its dev tools
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))
	$(BIN)/pip install --quiet -e ".[dev]" $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))
	@$(PY) -c "import torch, mlflow, optuna; print('installed: torch', torch.__version__, '| mlflow', mlflow.__version__, '| optuna', optuna.__version__)"

pipeline: ## run every stage: prepare, tune, train, evaluate, register
	$(PY) -m pipeline $(ARGS)

prepare: ## run one stage alone (upstream stages come from the newest matching runs)
	$(PY) -m pipeline stages=[prepare] $(ARGS)
tune: ## tune alone
	$(PY) -m pipeline stages=[tune] $(ARGS)
train: ## train alone
	$(PY) -m pipeline stages=[train] $(ARGS)
evaluate: ## evaluate alone
	$(PY) -m pipeline stages=[evaluate] $(ARGS)
register: ## register alone
	$(PY) -m pipeline stages=[register] $(ARGS)

test: ## every test (what CI runs)
	$(TEST_ENV) $(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

test-fast: ## the quick tests, for the inner loop
	$(TEST_ENV) $(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile -m "not slow" -x -q $(PYTEST_ARGS)

lint: ## ruff lint and format check
	$(BIN)/ruff check pipeline tests bench
	$(BIN)/ruff format --check pipeline tests bench

format: ## ruff format and autofix
	$(BIN)/ruff format pipeline tests bench
	$(BIN)/ruff check --fix pipeline tests bench

ui: ## the MLflow UI over the default store, with a link to the runs table
	@$(PY) -m pipeline.ui --backend-store-uri "$(TRACKING_URI)" --port $(UI_PORT)

sweep: ## a parallel study: make sweep N_TRIALS=40 WORKERS=2
	$(PY) -m pipeline stages=[prepare,tune] tune.n_trials=$(N_TRIALS) tune.n_jobs=$(WORKERS) $(ARGS)

sweep-worker: ## join an existing study (give tune.storage= and tune.study_name= in ARGS)
	$(PY) -m pipeline stages=[tune] $(ARGS)

dashboard: ## optuna-dashboard on the pipeline's study storage, on 127.0.0.1:8080
	@$(PY) -m pipeline.dashboard --port $(DASHBOARD_PORT) $(if $(STORAGE),--storage "$(STORAGE)") $(ARGS)

serve: ## serve the champion model on 127.0.0.1:5001
	$(PY) -m pipeline.serving serve --port $(SERVE_PORT) $(ARGS)

predict: ## score a file with the champion: make predict INPUT=rows.csv OUTPUT=preds.csv
	$(PY) -m pipeline.serving predict --input "$(INPUT)" --output "$(OUTPUT)" $(ARGS)

dockerfile: ## a Docker build folder for the champion: make dockerfile (then docker build dockerfile)
	$(PY) -m pipeline.serving dockerfile --output dockerfile $(ARGS)

server: ## a local MLflow tracking server backed by PostgreSQL on 127.0.0.1:5050
	$(PY) -m pipeline.infra start --port $(SERVER_PORT)

server-stop: ## stop it
	$(PY) -m pipeline.infra stop

report: ## the path of the newest pipeline run's report.html (or RUN=<run id>)
	@$(PY) -m pipeline.report $(RUN) $(ARGS)

reproduce: ## re-run prepare, train and evaluate of a finished pipeline run: make reproduce RUN=<run id>
	$(PY) -m pipeline.reproduce "$(RUN)" $(ARGS)

bench: ## benchmarks (ratios measured side by side); results land in bench/results/
	$(PY) -m bench.run_all $(ARGS)

clean: ## caches and outputs (never the tracking store or the registry)
	rm -rf outputs multirun .pytest_cache .ruff_cache predictions.csv
	find . -name __pycache__ -type d -not -path "./$(VENV)/*" -prune -exec rm -rf {} +

clean-store: clean ## also delete the local tracking store, registry, artifacts, studies and locks
	rm -rf mlflow.db mlruns mlartifacts optuna.journal optuna*.db locks .registry-*.lock
