"""Command line: `python -m pipeline [overrides]` (or `.venv/bin/pipeline`) runs the configured
stages. The overrides are checked before Hydra starts; the Hydra app itself is thin."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import hydra
from omegaconf import DictConfig

from pipeline.config import register_schemas
from pipeline.errors import PipelineError

if TYPE_CHECKING:
    from pipeline.config.hydra_job import ComposedJob

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")
register_schemas()


def _fail(exc: Exception) -> None:
    from pipeline.tracking.provenance import mask

    print(f"error: {mask(str(exc))}", file=sys.stderr, flush=True)
    sys.exit(getattr(exc, "exit_code", 2))


def _unexpected(exc: Exception, cfg: DictConfig | None = None) -> None:
    """A fault of the environment in one line (exit 2); anything else in one line too (exit 1).
    Either way the traceback goes to the run's log file (when it can still be written)."""
    import logging

    from pipeline.faults import explain
    from pipeline.tracking.provenance import mask

    logging.getLogger("pipeline").error("the run stopped on this error", exc_info=exc)
    line = explain(exc, _store_of(cfg))
    if line is not None:
        _fail(PipelineError(line))
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    print(f"error: unexpected {type(exc).__name__}: {mask(first)[:300]} (the traceback is in the run's pipeline.log)",
          file=sys.stderr, flush=True)  # fmt: skip
    sys.exit(1)


def _store_of(cfg: DictConfig | None) -> str | None:
    """The tracking store as a fault names it: its database file, or its masked URI."""
    if cfg is None or not cfg.tracking.enabled:
        return None
    from pipeline.tracking.provenance import mask
    from pipeline.tracking.store import local_store_dir, tracking_uri

    uri = tracking_uri(cfg.tracking.uri)
    return uri[len("sqlite:///") :] if local_store_dir(uri) is not None else mask(uri)


HYDRA_VALUED_FLAGS = ("--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn",
                      "--config-dir", "-cd", "--experimental-rerun")  # fmt: skip
HYDRA_HELP = {"--help", "-h", "--hydra-help", "--version", "--shell-completion", "-sc", "--info", "-i"}
HYDRA_MODES = ("-m", "--multirun", "--cfg", "-c", "--info", "-i", "--shell-completion", "-sc")  # one at most


def _overrides(args: list[str]) -> list[str]:
    """The overrides among Hydra's arguments: not its flags (`--cfg job`, `-m`), nor their values."""
    overrides, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg in HYDRA_VALUED_FLAGS:
            skip = True
        elif not arg.startswith("-"):
            overrides.append(arg)
    return overrides


def preflight(args: list[str]) -> ComposedJob | None:
    """Check the overrides, and that Hydra's output folder can be written, before Hydra writes
    it (Hydra reports its own failure to write with a traceback): one line and exit 2 when wrong.
    A plain run (overrides only) gets the config it checked, to run with; Hydra's modes get None."""
    import logging

    from pipeline.config import validate
    from pipeline.config.hydra_job import compose_job
    from pipeline.config.overrides import compose_checked, refuse_passwords
    from pipeline.faults import check_writable

    logging.raiseExceptions = False  # a full disk must not print a traceback per log line
    overrides = _overrides(args)
    multirun = any(a in ("-m", "--multirun") for a in args)
    key, default = ("hydra.sweep.dir", "multirun") if multirun else ("hydra.run.dir", "outputs")
    out_dir = next((o.split("=", 1)[1] for o in overrides if o.startswith(f"{key}=")), default)
    modes = [a for a in args if a in HYDRA_MODES]
    composed = None
    try:
        if len(modes) > 1:
            raise PipelineError(f"{' and '.join(modes)} cannot be given together; give one of them")
        refuse_passwords(overrides)
        # a plain run: what is checked is what runs (Hydra's debug output is Hydra's own)
        if overrides == args and not any(o.lstrip("+").startswith("hydra.verbose=") for o in overrides):
            composed = compose_job(overrides, job)
            validate(composed.task)  # before the run's folder is created
        elif not multirun and not set(args) & HYDRA_HELP:  # a sweep's values are checked per job
            cfg = compose_checked(overrides)
            if [a for a in args if a not in overrides] in (["--cfg", "job"], ["-c", "job"]):
                _print_job_config(cfg)  # what Hydra would print, without composing it a second time
            if not {"--cfg", "-c"} & set(args):  # printing a config is fine; running a bad one is not
                validate(cfg)  # before Hydra creates the run's folder
        check_writable(Path(out_dir), f"run from a writable folder or set {key}=<a writable folder>")
    except PipelineError as exc:
        _fail(exc)
    return composed


def _print_job_config(cfg: DictConfig) -> NoReturn:
    from omegaconf import OmegaConf

    sys.stdout.write(OmegaConf.to_yaml(cfg))
    sys.exit(0)


def job(cfg: DictConfig) -> float | None:
    """The Hydra job: the configured stages on one composed config."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from pipeline.config import validate
    from pipeline.config.overrides import explicit_keys
    from pipeline.shutdown import end_on_sigterm

    end_on_sigterm()
    if HydraConfig.get().mode == RunMode.MULTIRUN:  # preflight checked a single run's config already
        try:
            validate(cfg)  # before the heavy imports: a bad value is reported in a second
        except PipelineError as exc:
            _fail(exc)
    from pipeline.console import say
    from pipeline.data.inspection import read_and_inspect
    from pipeline.tracking.provenance import apply_credentials
    from pipeline.tuning.workers import start_workers

    say(f"running {', '.join(cfg.stages)} on {cfg.data.name}; families: {', '.join(cfg.candidates)}")
    try:  # before the workers start: they inherit the environment it sets
        apply_credentials(cfg.tracking.credentials)
    except PipelineError as exc:
        _fail(exc)
    # first: spawned tuning workers import and warm up while this process does the rest
    pool = start_workers(cfg)
    try:
        source = read_and_inspect(cfg.data)  # a bad table is reported before the heavy imports
    except PipelineError as exc:
        if pool is not None:
            pool.close()
        _fail(exc)
    from pipeline.console import quiet_libraries
    from pipeline.runner import run_pipeline
    from pipeline.summary import summary_lines

    quiet_libraries()
    progress = sys.stderr.isatty() if cfg.progress is None else bool(cfg.progress)
    explicit = explicit_keys(HydraConfig.get().overrides.task)
    try:
        result = run_pipeline(
            cfg, progress=progress, pool=pool, checked=True, explicit=explicit, source=source
        )
    except PipelineError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        print("interrupted: open runs were marked KILLED", file=sys.stderr, flush=True)
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - one line, never Hydra's job report (it prints overrides)
        _unexpected(exc, cfg)
    print("\n".join(summary_lines(result)), flush=True)
    evaluation = result.outputs.get("evaluate")
    return evaluation.metrics.get(result.objective.metric) if evaluation else None


main = hydra.main(config_path=CONFIG_DIR, config_name="config", version_base="1.3")(job)


def cli() -> None:
    """The `pipeline` console script and `python -m pipeline`. The process ends without the
    interpreter's teardown (seconds with torch and MLflow loaded; see `pipeline.shutdown`)."""
    from pipeline.config.hydra_job import run
    from pipeline.shutdown import run_then_exit
    from pipeline.startup import defer_full_collections

    defer_full_collections()  # until the work begins (see pipeline.startup)

    def command() -> None:
        composed = preflight(sys.argv[1:])
        if composed is None:
            main()
        else:
            run(composed, job)

    run_then_exit(command)


if __name__ == "__main__":
    cli()
