"""A plain run of the command line (overrides only, no Hydra flag) with its config composed once.

`hydra.main` composes a run's config twice, once to read `hydra.mode` and once to run it, and the
command line composes it a third time to check it before Hydra writes anything: about 0.45 s each.
Here the config that was checked is the config that runs: `run` does what Hydra's own `run` does
with it (the same output folder, `.hydra/` files, logging, callbacks and `HydraConfig`). Every
other mode (`--cfg`, `-m`, `--help`, `--info`) stays Hydra's own."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, open_dict

from pipeline.config.overrides import CONFIG_DIR, check_keys, composed_or_explained, refuse_passwords

CONFIG_NAME = "config"


@dataclass(frozen=True)
class ComposedJob:
    """A run's whole config (with its `hydra` node), the Hydra instance that composed it, and
    what the job function receives: the config without its `hydra` node."""

    hydra: Any  # hydra._internal.hydra.Hydra, the process's GlobalHydra until `run` ends
    config: DictConfig
    task: DictConfig


def _without_hydra(config: DictConfig) -> DictConfig:
    task = copy.deepcopy(config)
    with open_dict(task):
        del task["hydra"]
    return task


def compose_job(overrides: list[str], task_function: Callable[[DictConfig], Any]) -> ComposedJob:
    """The config `hydra.main(config_path=CONFIG_DIR, config_name="config")(task_function)` would
    run with these overrides, or a ConfigError naming what is wrong."""
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import (
        create_automatic_config_search_path,
        detect_calling_file_or_module_from_task_function,
        detect_task_name,
    )
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    from pipeline.config.schema import register_schemas

    refuse_passwords(overrides)
    register_schemas()
    calling_file, calling_module = detect_calling_file_or_module_from_task_function(task_function)
    GlobalHydra.instance().clear()
    hydra = Hydra.create_main_hydra2(
        task_name=detect_task_name(calling_file, calling_module),
        config_search_path=create_automatic_config_search_path(calling_file, calling_module, str(CONFIG_DIR)),
    )
    # what `hydra.main` adds when the config names no mode
    hydra_overrides = [*overrides, "hydra.mode=RUN"]
    try:
        config = composed_or_explained(
            lambda: hydra.compose_config(CONFIG_NAME, hydra_overrides, run_mode=RunMode.RUN), overrides
        )
        job = ComposedJob(hydra, config, _without_hydra(config))
        check_keys(job.task)
    except BaseException:
        GlobalHydra.instance().clear()
        raise
    return job


def run(job: ComposedJob, task_function: Callable[[DictConfig], Any]) -> None:
    """Hydra's `run` of `task_function` on the composed config: its return value is Hydra's
    business (none here); an exception it raises is reported as Hydra reports it."""
    from hydra._internal.callbacks import Callbacks
    from hydra._internal.utils import run_and_report
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.utils import configure_log, run_job
    from hydra.types import HydraContext

    def run_once() -> None:
        configure_log(job.config.hydra.hydra_logging, job.config.hydra.verbose)
        callbacks = Callbacks(job.config)
        callbacks.on_run_start(config=job.config, config_name=CONFIG_NAME)
        done = run_job(
            hydra_context=HydraContext(config_loader=job.hydra.config_loader, callbacks=callbacks),
            task_function=task_function,
            config=job.config,
            job_dir_key="hydra.run.dir",
            job_subdir_key=None,
        )
        callbacks.on_run_end(config=job.config, config_name=CONFIG_NAME, job_return=done)
        _ = done.return_value  # raises what the job raised

    try:
        run_and_report(run_once)
    finally:
        GlobalHydra.instance().clear()
