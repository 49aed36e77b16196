"""Shared fixtures: a real MLflow store (SQLite in a temp dir), configs composed like the command
line does but shrunk to tiny budgets, and a helper that runs `python -m pipeline` for real."""

from __future__ import annotations

import atexit
import copy
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from python_runner import remember_the_schema_head, run_python, share_server

if TYPE_CHECKING:
    from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"
# tiny budgets: every test that runs stages starts from these
TINY = [
    "tune.n_trials=2",
    "tune.epochs=3",
    "train.epochs=4",
    "candidates=[network]",
    "evaluate.bootstrap=50",
    "train.threads=1",
    # the tree families' sizes shrunk like the network's epochs (every step they report is kept)
    "family.random_forest.n_estimators=40",
    "family.hist_gradient_boosting.max_iter=40",
    # figures cost 0.1-0.3 s each and most runs draw 8-20; tests/test_plots.py draws every one,
    # and the tests of the report and of the plots in the store turn them on
    "tracking.plots=false",
    # its thread reads the run and logs a batch every half second beside each train and tune run;
    # tests/test_mlflow_ui.py checks the samples, and the runs that faults and signals end keep
    # it on (tests/test_faults.py `_cli`)
    "tracking.system_metrics=false",
]

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no bars in test logs


def pytest_configure(config: pytest.Config) -> None:
    """`pytest -n N` runs the tests in N processes started by this one, which only hands out the
    tests: it starts the shared python server for them (`python_runner.share_server`) and imports
    none of the libraries they import, so they start sooner."""
    if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):
        share_server()
        return
    if hasattr(config, "workerinput"):
        atexit.register(_exit_without_teardown)
    from pipeline.config import register_schemas

    register_schemas()
    remember_the_schema_head()


def _exit_without_teardown() -> None:
    """A test process of `pytest -n` has sent every result by the time it exits, and the one that
    started it waits for it: tearing down the modules of hundreds of tests (torch, MLflow, ...)
    took 3-4 s there and freed nothing. The exit handlers registered after this one have run by
    then; of those registered before it, the one that matters (logging's) is run here."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(0)


def prepare_config(cfg: DictConfig):
    """The prepare stage on a composed config (its data section and seed)."""
    from pipeline.stages.prepare import prepare

    return prepare(cfg.data, cfg.seed)


@pytest.fixture(scope="session")
def migrated_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow SQLite store whose schema is created once per session (by the first test
    process of `pytest -n` that needs it): creating it takes seconds, and most tests start from a
    fresh store."""
    from filelock import FileLock
    from mlflow.tracking import MlflowClient

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    path = shared / "template" / "mlflow.db"
    with FileLock(shared / "template.lock"):
        if not path.exists():
            path.parent.mkdir(exist_ok=True)
            made = path.with_name("making.db")
            MlflowClient(tracking_uri=f"sqlite:///{made}").search_experiments()
            made.rename(path)
    return path


@pytest.fixture
def store(tmp_path: Path, migrated_db: Path) -> str:
    """A fresh SQLite tracking store in a temp dir (artifacts and studies live beside it)."""
    path = tmp_path / "store" / "mlflow.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(migrated_db, path)
    uri = f"sqlite:///{path}"
    yield uri
    import mlflow

    while mlflow.active_run() is not None:
        mlflow.end_run()


# Hydra composes in two steps: the defaults list that the config group overrides (`data=table`)
# select, then the value overrides (`train.epochs=4`) applied to it. The first takes a third of a
# second and most tests select the same groups: each test process makes it once per selection
_COMPOSED: dict[tuple[str, ...], DictConfig] = {}


def _is_group(key: str) -> bool:
    return key.startswith("hydra") or (CONF / key).is_dir()


def composed(overrides: list[str]) -> DictConfig:
    """The config Hydra composes from these overrides, as `compose` makes it."""
    from hydra import compose, initialize_config_dir
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    groups = tuple(o.input_line for o in parsed if _is_group(o.key_or_group))
    if groups not in _COMPOSED:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            _COMPOSED[groups] = compose(config_name="config", overrides=list(groups))
    cfg = copy.deepcopy(_COMPOSED[groups])
    ConfigLoaderImpl._apply_overrides_to_config([o for o in parsed if not _is_group(o.key_or_group)], cfg)
    return cfg


@pytest.fixture
def make_cfg(store: str) -> Callable[..., DictConfig]:
    """Compose the real config with overrides, tiny budgets and the temp store."""

    def build(*overrides: str, tiny: bool = True) -> DictConfig:
        return composed([*(TINY if tiny else []), f"tracking.uri={store}", *overrides])

    return build


@pytest.fixture
def run_cli(store: str, tmp_path: Path) -> Callable[..., subprocess.CompletedProcess]:
    """Run `python -m pipeline` in its own process against the temp store (forked from a server
    that imported the libraries once: `python_runner.py`)."""

    def run(*overrides: str, tiny: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        args = [
            sys.executable,
            "-m",
            "pipeline",
            *(TINY if tiny else []),
            f"tracking.uri={store}",
            f"hydra.run.dir={tmp_path / 'outputs'}",
            *overrides,
        ]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        return run_python(args, cwd=ROOT, timeout=timeout, env=env)

    return run


# loads a model where the project's own `pipeline` cannot be imported (not from the working folder,
# nor through the editable install, nor from what the server this process is forked from imported),
# so that only the code the model carries can serve it
LOAD_ALONE = """
import sys
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in getattr(f, "__module__", "")]
for name in [m for m in sys.modules if m.split(".")[0] == "pipeline"]:
    del sys.modules[name]
import mlflow, pandas as pd
mlflow.set_tracking_uri(sys.argv[1])
model = mlflow.pyfunc.load_model(sys.argv[2])
try:
    model.predict(pd.read_pickle(sys.argv[3])).to_pickle(sys.argv[4])
except mlflow.exceptions.MlflowException as refused:  # the model refused the rows
    print("refused:", refused)
used = [m.__file__ for n, m in sys.modules.items() if n.split(".")[0] == "pipeline"]
print("outside the model's code:", [f for f in used if "/code/pipeline/" not in f])
"""


def predict_alone(store: str, model_uri: str, rows: Any, folder: Path) -> Any:
    """The model's predictions for the rows (a frame), or the line it refused them with, from a
    process of its own that has only the model's bundled code to import `pipeline` from."""
    import pandas as pd

    folder = Path(tempfile.mkdtemp(dir=folder))
    rows.to_pickle(folder / "rows.pkl")
    command = [
        sys.executable,
        "-c",
        LOAD_ALONE,
        store,
        model_uri,
        str(folder / "rows.pkl"),
        str(folder / "out.pkl"),
    ]
    done = run_python(command, cwd=folder, env={**os.environ, "PYTHONPATH": ""}, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "outside the model's code: []" in done.stdout, done.stdout
    refused = [line for line in done.stdout.splitlines() if line.startswith("refused: ")]
    return refused[0].removeprefix("refused: ") if refused else pd.read_pickle(folder / "out.pkl")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The files with the most slow tests first, each file's tests together and the slow ones
    first in it: `make test` gives each process whole files, and a long file started last would
    keep one process busy while the other sits idle at the end."""
    slow = Counter(item.path for item in items if item.get_closest_marker("slow"))
    first = {path: i for i, path in enumerate(dict.fromkeys(item.path for item in items))}
    items.sort(key=lambda item: (-slow[item.path], first[item.path], item.get_closest_marker("slow") is None))
