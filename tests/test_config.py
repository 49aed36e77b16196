"""Bad configurations fail before any work, with one clear message naming the key."""

from __future__ import annotations

import sys
from pathlib import Path

import optuna
import pytest
from omegaconf import OmegaConf
from python_runner import run_python

from pipeline.config import validate
from pipeline.config.overrides import compose_checked
from pipeline.errors import ConfigError
from pipeline.tuning.space import apply_values, parse_space, suggest, values_from_params

ROOT = Path(__file__).resolve().parent.parent


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


# the command line, with each composition of the config said on stderr
COUNTING_COMPOSITIONS = """
import sys
from hydra._internal.hydra import Hydra
compose_config = Hydra.compose_config
def said(self, *args, **kwargs):
    print("composing", file=sys.stderr, flush=True)
    return compose_config(self, *args, **kwargs)
Hydra.compose_config = said
sys.argv = ["pipeline", *sys.argv[1:]]
from pipeline.__main__ import cli
cli()
"""


def test_a_plain_run_composes_its_config_once_and_writes_what_hydra_writes(store, tmp_path):
    out = tmp_path / "out"
    task = ["stages=[prepare]", f"tracking.uri={store}"]
    done = run_python(
        [sys.executable, "-c", COUNTING_COMPOSITIONS, *task, f"hydra.run.dir={out}"], cwd=ROOT, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr.count("composing") == 1  # checked and run with one composition
    assert OmegaConf.load(out / ".hydra" / "config.yaml") == compose_checked(task)
    assert list(OmegaConf.load(out / ".hydra" / "overrides.yaml")) == task
    hydra = OmegaConf.load(out / ".hydra" / "hydra.yaml").hydra
    assert (hydra.mode, hydra.runtime.output_dir) == ("RUN", str(out))
    assert list(hydra.overrides.hydra) == [f"hydra.run.dir={out}", "hydra.mode=RUN"]
    assert "running prepare on breast_cancer" in (out / "pipeline.log").read_text()  # the job's logging


@pytest.mark.parametrize(
    ("override", "key"),
    [("train.foo=1", "train.foo"), ("train.epochs=abc", "train.epochs"), ("data=nope", "data")],
)
def test_cli_rejects_unknown_keys_wrong_types_and_unknown_data_sets(run_cli, override, key):
    proc = run_cli(override)
    assert proc.returncode != 0
    assert key in proc.stderr
    assert "Traceback" not in proc.stderr
    if override == "data=nope":
        assert "nope" in proc.stderr and "wine" in proc.stderr  # names the valid choices


@pytest.mark.parametrize(
    ("override", "key"), [("train.lr=-1", "train.lr"), ("tune.n_trials=0", "tune.n_trials")]
)
def test_cli_rejects_out_of_range_values_with_one_line(run_cli, override, key):
    proc = run_cli(override)
    assert proc.returncode != 0
    lines = _error_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert key in lines[0] and "out of range" in lines[0]
    assert "Traceback" not in proc.stderr
    assert proc.stdout.strip() == ""  # no summary, no stage ran


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.activation=swish"], "model.activation='swish' is not valid; expected one of relu"),
        (["train.optimizer=lbfgs"], "train.optimizer='lbfgs' is not valid"),
        (["train.device=tpu"], "train.device='tpu' is not valid"),
        (["stages=[]"], r"stages=\[\] is empty"),
        (["stages=[prepare,deploy]"], "stages='deploy' is not valid"),
        (["stages=[prepare,prepare]"], "repeats a stage"),
        (
            ["data.split.val_size=0.5", "data.split.test_size=0.45"],
            "leaves too little for training",
        ),
        (["data.split.test_size=1.5"], r"data.split.test_size=1.5 is out of range"),
        (["data.split.val_size=0"], r"data.split.val_size=0.0 is out of range"),
        (["data.split.strategy=group"], "needs data.split.group=<column>"),
        (["model.dropout=1.0"], "model.dropout=1.0 is out of range"),
        (["train.label_smoothing=-0.1"], "train.label_smoothing=-0.1 is out of range"),
        (
            ["train.cv_folds=1"],
            r"train.cv_folds=1 is out of range; it must be 0 \(the validation split alone\) or >= 2",
        ),
        (["evaluate.ensemble_rounds=-1"], "evaluate.ensemble_rounds=-1 is out of range"),
        (["objective.metric=rmse_log"], "objective.metric='rmse_log' is not valid"),
        (["candidates=[network,xgboost]"], "candidates='xgboost' is not valid; expected one of network"),
        (["candidates=[]"], r"candidates=\[\] is empty"),
        (["candidates=[linear,linear]"], "repeats a family"),
        (["family.random_forest.max_features=cube"], "family.random_forest.max_features='cube' is not valid"),
        (["family.hist_gradient_boosting.learning_rate=0"], "learning_rate=0.0 is out of range"),
        (["tracking.enabled=false", "stages=[train]"], "include prepare in stages"),
    ],
)
def test_validate_names_the_key_and_what_is_valid(make_cfg, overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(make_cfg(*overrides))


def test_validate_accepts_the_shipped_configs(make_cfg):
    validate(make_cfg())
    validate(make_cfg("data=digits", "model=cnn"))
    validate(make_cfg("experiment=digits_cnn"))
    validate(make_cfg("experiment=quick", "data=diabetes", "stages=[prepare,train]"))


def test_validate_checks_the_search_space_paths(make_cfg):
    with pytest.raises(
        ConfigError, match="tune.space.network entry 'train.nope' names no tunable config key"
    ):
        validate(make_cfg("+tune.space.network.train.nope={type: float, low: 0.1, high: 1.0}"))
    with pytest.raises(ConfigError, match="'family.linear.penalty' names no tunable config key"):
        validate(make_cfg("+tune.space.linear.family.linear.penalty={type: categorical, choices: [l1, l2]}"))
    with pytest.raises(ConfigError, match="tune.space.xgboost names no model family"):
        validate(make_cfg("+tune.space.xgboost={}"))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "tune.space.network.model.activation.choices=[relu,swish]",
            "entry 'model.activation' can draw a value the key refuses: model.activation='swish' "
            "is not valid; expected one of relu",
        ),
        ("tune.space.network.model.dropout.high=1.5", "refuses: model.dropout=1.5 is out of range"),
        ("tune.space.network.train.batch_size.choices=[0,64]", "train.batch_size=0 is out of range"),
        ("tune.space.network.train.batch_size.choices=[big,64]", "batch_size='big' is not an integer"),
        (
            "+tune.space.network.train.batch_size={type:float,low:16,high:64}",
            r"batch_size is an integer and type: float draws fractions \(use type: int\)",
        ),
        (
            "tune.space.hist_gradient_boosting.family.hist_gradient_boosting.max_leaf_nodes.low=1",
            "max_leaf_nodes=1 is out of range; it must be >= 2; narrow its choices or bounds",
        ),
        (
            "tune.space.network.model.hidden.width.log=false tune.space.network.model.hidden.width.low=0",
            "model.hidden/model.channels entries=0 is out of range",
        ),
    ],
)
def test_a_search_space_cannot_hold_a_value_its_key_refuses(make_cfg, override, message):
    """Found when the command starts, not when a trial draws it in the middle of a search."""
    with pytest.raises(ConfigError, match=message):
        validate(make_cfg(*override.split()))


def test_checking_a_search_space_leaves_the_config_as_it_was(make_cfg):
    cfg = make_cfg("candidates=[network,hist_gradient_boosting,random_forest]")
    before = OmegaConf.to_container(cfg)
    validate(cfg)  # tries each space's values against the keys' types
    assert OmegaConf.to_container(cfg) == before


SPACE_ERRORS = [
    (
        {"train": {"nope": {"type": "float", "low": 0.1, "high": 1.0}}},
        "'train.nope' names no tunable config key",
    ),
    (
        {"tune.epochs": {"type": "int", "low": 1, "high": 5}},
        "'tune.epochs' names no tunable config key",
    ),
    (
        {"train.lr": {"type": "gaussian", "low": 0.1, "high": 1.0}},
        "type='gaussian'; expected one of float, int",
    ),
    ({"train.lr": 0.1}, "'train.lr' is 0.1; expected a mapping"),
    ({"train.lr": {"type": "float", "low": 0.1}}, "needs both low and high"),
    ({"train.lr": {"type": "float", "low": 0.5, "high": 0.1}}, "low=0.5 is greater than high=0.1"),
    (
        {"train.lr": {"type": "float", "low": 0.0, "high": 0.1, "log": True}},
        "log=true needs low > 0",
    ),
    (
        {"train.lr": {"type": "float", "low": -1.0, "high": 0.1, "log": True}},
        "log=true needs low > 0",
    ),
    ({"train.epochs": {"type": "int", "low": 1.5, "high": 8}}, "low and high must be integers"),
    ({"train.lr": {"type": "float", "low": "a", "high": 0.1}}, "low and high must be numbers"),
    ({"train.batch_size": {"type": "categorical", "choices": []}}, "non-empty list of choices"),
    (
        {"train.lr": {"type": "float", "low": 0.1, "high": 1.0, "scale": 2}},
        r"unknown fields \['scale'\]",
    ),
    ({"model.hidden": {"type": "layers", "n_layers": {"low": 1, "high": 2}}}, "needs n_layers"),
    (
        {
            "model.hidden": {
                "type": "layers",
                "n_layers": {"low": 0, "high": 2},
                "width": {"low": 4, "high": 8},
            }
        },
        "n_layers.low must be >= 1",
    ),
    (
        {
            "model.hidden": {
                "type": "layers",
                "n_layers": {"low": 1, "high": 2},
                "width": {"low": 9, "high": 8},
            }
        },
        "'model.hidden.width': low=9 is greater than high=8",
    ),
]


@pytest.mark.parametrize(("space", "message"), SPACE_ERRORS)
def test_parse_space_rejects_bad_entries(make_cfg, space, message):
    with pytest.raises(ConfigError, match=message):
        parse_space(space, make_cfg())


def test_parse_space_without_a_config_does_not_check_paths():
    (dimension,) = parse_space({"anything.at.all": {"type": "float", "low": 0.1, "high": 1.0}})
    assert dimension.path == "anything.at.all"


def test_layers_entry_samples_a_list_of_widths(make_cfg):
    cfg = make_cfg()
    space = {
        "model": {
            "hidden": {
                "type": "layers",
                "n_layers": {"low": 1, "high": 3},
                "width": {"low": 16, "high": 256, "log": True},
            }
        },
        "train.lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
        "train.batch_size": {"type": "categorical", "choices": [32, 64]},
    }
    dimensions = parse_space(space, cfg)
    assert [d.path for d in dimensions] == ["model.hidden", "train.lr", "train.batch_size"]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen_lengths = set()
    for _ in range(12):
        trial = study.ask()
        values = suggest(trial, dimensions)
        hidden = values["model.hidden"]
        assert isinstance(hidden, list) and 1 <= len(hidden) <= 3
        assert all(isinstance(w, int) and 16 <= w <= 256 for w in hidden)
        assert 1e-4 <= values["train.lr"] <= 1e-1 and values["train.batch_size"] in (32, 64)
        # a width is only sampled for layers that exist
        assert sorted(k for k in trial.params if k.startswith("model.hidden.width_")) == [
            f"model.hidden.width_{i}" for i in range(len(hidden))
        ]
        assert values_from_params(trial.params, dimensions) == values
        applied = apply_values(cfg, values)
        assert list(applied.model.hidden) == hidden and applied.train.lr == values["train.lr"]
        assert list(cfg.model.hidden) == [128, 64]  # the original config is unchanged
        study.tell(trial, 0.0)
        seen_lengths.add(len(hidden))
    assert len(seen_lengths) > 1


def test_the_tests_composed_configs_are_the_ones_hydra_composes():
    """`conftest.composed` reuses the defaults list of a choice of config groups and applies the
    value overrides to it: the same config, flags included, as composing it whole."""
    from conftest import CONF, composed
    from hydra import compose, initialize_config_dir

    for overrides in (
        ["data=table", "data.path=x.csv", "data.target=y", "candidates=[network]"],
        ["experiment=quick", "tune.n_trials=3", "model=cnn", "data=digits"],
        ["+train.extra=1", "tracking=server", "tracking.uri=http://127.0.0.1:1"],
    ):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            whole = compose(config_name="config", overrides=overrides)
        ours = composed(overrides)
        assert OmegaConf.to_yaml(ours) == OmegaConf.to_yaml(whole), overrides
        assert OmegaConf.is_struct(ours) and OmegaConf.is_struct(whole)
