"""Command line: `python -m pipeline [overrides]` runs the configured stages (Hydra app)."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from pipeline.config import register_schemas

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")
register_schemas()


def _terminate(signum: int, frame: object) -> None:
    from pipeline.errors import Terminated

    raise Terminated(f"signal {signum}")


def _fail(exc: Exception) -> None:
    print(f"error: {exc}", file=sys.stderr, flush=True)
    sys.exit(getattr(exc, "exit_code", 2))


@hydra.main(config_path=CONFIG_DIR, config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    from pipeline.config import validate
    from pipeline.errors import PipelineError

    signal.signal(signal.SIGTERM, _terminate)
    try:
        validate(cfg)  # before the heavy imports: a bad value is reported in a second
    except PipelineError as exc:
        _fail(exc)
    from pipeline.tuning.workers import start_workers

    # before the stages' imports (seconds): spawned tuning workers import at the same time
    pool = start_workers(cfg)
    from pipeline.console import quiet_libraries
    from pipeline.runner import run_pipeline
    from pipeline.summary import summary_lines

    quiet_libraries()
    progress = sys.stderr.isatty() if cfg.progress is None else bool(cfg.progress)
    try:
        result = run_pipeline(cfg, progress=progress, pool=pool, checked=True)
    except PipelineError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        print("interrupted: open runs were marked KILLED", file=sys.stderr, flush=True)
        sys.exit(130)
    print("\n".join(summary_lines(result)), flush=True)
    evaluation = result.outputs.get("evaluate")
    return evaluation.metrics.get(result.objective.metric) if evaluation else None


if __name__ == "__main__":
    main()
