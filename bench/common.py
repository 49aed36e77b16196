"""Helpers shared by the benchmarks: config composition, side-by-side timing, result files."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"
RESULTS = ROOT / "bench" / "results"


def parser(description: str) -> argparse.ArgumentParser:
    """The flags every benchmark takes."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="a small, fast version (for checking that it runs)")
    p.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed repeats per variant (median reported; at least 3 recommended)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads, the same for every variant (default 1: steadier on a shared machine)",
    )
    return p


def compose(*overrides: str) -> Any:
    """The real config (conf/config.yaml and its schema), composed like the command line does."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from pipeline.config import register_schemas

    register_schemas()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides))


def quiet(mlflow: bool = False) -> None:
    """Keep MLflow's, Optuna's, Alembic's and Lightning's chatter off the benchmark's output.
    Libraries set their loggers' levels when imported: call this after importing them (with
    mlflow=True, MLflow is imported here first)."""
    import logging
    import warnings

    if mlflow:
        import mlflow as _  # noqa: F401

    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    warnings.filterwarnings("ignore")
    for name in (
        "mlflow",
        "alembic",
        "optuna",
        "urllib3",
        "lightning",
        "lightning.pytorch",
        "pytorch_lightning",
        "lightning.fabric",
        "lightning_fabric",
        "lightning.pytorch.utilities.rank_zero",
        "lightning.fabric.utilities.rank_zero",
    ):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
    except ImportError:
        pass


def alternate(
    variants: dict[str, Callable[[], Any]],
    repeats: int,
    warmup: int = 1,
    measure: Callable[[str, Any, float], float] | None = None,
    log: bool = True,
) -> dict[str, list[float]]:
    """Run each variant `warmup` times untimed, then `repeats` rounds that each run every variant
    once (the order rotates each round, so no variant always goes first). Returns the times.

    `measure(name, returned, seconds)` may turn a call's result into the number kept (for example
    seconds per epoch); by default the wall time of the call is kept.
    """
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(repeats):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            started = time.perf_counter()
            returned = variants[name]()
            seconds = time.perf_counter() - started
            times[name].append(measure(name, returned, seconds) if measure else seconds)
        if log:
            print(
                f"  round {round_ + 1}/{repeats}: " + ", ".join(f"{n} {times[n][-1]:.4g}" for n in names),
                flush=True,
            )
    return times


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    position = (len(ordered) - 1) * q / 100.0
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def spread(values: Sequence[float]) -> str:
    """min-max of the repeats, to show how noisy the median is."""
    return f"{min(values):.4g}-{max(values):.4g}" if values else ""


def fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != value:  # nan
            return "nan"
        return f"{value:.{digits}g}"
    return str(value)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
    }


@dataclass
class Report:
    """A benchmark's results: headline rows (for the combined table) and markdown sections."""

    name: str
    title: str
    quick: bool
    settings: dict[str, Any] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    sections: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    load_at_start: tuple[float, ...] = field(default_factory=lambda: load_average())

    def headline(self, measure: str, value: Any, target: str = "", ok: bool | None = None) -> None:
        """One line of the combined table: what was measured, its value, the target and verdict."""
        self.rows.append({"measure": measure, "value": value, "target": target, "ok": ok})

    def section(self, heading: str, body: str) -> None:
        self.sections.append(f"## {heading}\n\n{body}\n")
        print(f"\n## {heading}\n\n{body}\n", flush=True)

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"note: {text}", flush=True)

    def write(self) -> Path:
        RESULTS.mkdir(parents=True, exist_ok=True)
        info = machine()
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        lines = [
            f"# {self.title}",
            "",
            f"- run: {stamp}, {'--quick (small sizes)' if self.quick else 'full'}",
            f"- machine: {info['cpu_count']} CPU cores, {info['processor']}, {info['platform']}",
            f"- python {info['python']}, torch {info['torch']}",
            f"- load average (1, 5, 15 min) at start {fmt_load(self.load_at_start)}, at end "
            f"{fmt_load(load_average())}: other processes share these cores, so compare only the "
            "side-by-side ratios",
            f"- settings: {json.dumps(self.settings, default=str)}",
            "",
            "## Headline",
            "",
            markdown_table(
                ["measure", "value", "target", "verdict"],
                [[r["measure"], r["value"], r["target"], verdict(r["ok"])] for r in self.rows],
            ),
            "",
        ]
        lines += self.sections
        if self.notes:
            lines += ["## Notes", ""] + [f"- {n}" for n in self.notes] + [""]
        path = RESULTS / f"{self.name}.md"
        path.write_text("\n".join(lines))
        (RESULTS / f"{self.name}.json").write_text(
            json.dumps(
                {
                    "name": self.name,
                    "title": self.title,
                    "quick": self.quick,
                    "when": stamp,
                    "machine": info,
                    "settings": self.settings,
                    "rows": self.rows,
                    "load_average": {"start": self.load_at_start, "end": load_average()},
                    "notes": self.notes,
                },
                indent=2,
                default=str,
            )
        )
        print(f"\nheadline ({self.name}):")
        print(
            markdown_table(
                ["measure", "value", "target", "verdict"],
                [[r["measure"], r["value"], r["target"], verdict(r["ok"])] for r in self.rows],
            )
        )
        print(f"wrote {path.relative_to(ROOT)}", flush=True)
        return path


def load_average() -> tuple[float, ...]:
    try:
        return tuple(round(x, 2) for x in os.getloadavg())
    except OSError:
        return ()


def fmt_load(values: tuple[float, ...]) -> str:
    return ", ".join(f"{v:.2f}" for v in values) if values else "unknown"


def verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("ok" if ok else "MISSED")


def set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def die(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
    sys.exit(1)


_TEMPLATE: dict[str, Path] = {}


def fresh_store(folder: Path) -> str:
    """A new, empty SQLite tracking store in `folder`; returns its URI.

    Creating an MLflow SQLite store runs every schema migration (seconds to tens of seconds on a
    slow disk), so the first store is built once per process and later ones are copies of it:
    each benchmark configuration still gets a store of its own, without timing the migrations.
    """
    import atexit
    import shutil
    import tempfile

    folder.mkdir(parents=True, exist_ok=True)
    if "db" not in _TEMPLATE:
        from mlflow.tracking import MlflowClient

        # migrations commit hundreds of times: build the template in memory-backed /dev/shm if any
        shm = Path("/dev/shm")
        where = str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None
        template_dir = Path(tempfile.mkdtemp(prefix="bench-store-template-", dir=where))
        atexit.register(shutil.rmtree, template_dir, True)
        uri = f"sqlite:///{template_dir / 'mlflow.db'}"
        MlflowClient(uri).search_experiments()  # creates the schema
        _TEMPLATE["db"] = template_dir / "mlflow.db"
    shutil.copyfile(_TEMPLATE["db"], folder / "mlflow.db")
    return f"sqlite:///{folder / 'mlflow.db'}"
