"""Against the plain script: `make pipeline` and bench/plain_script.py on the same work.

breast_cancer, the network only, 12 trials of 30 epochs, a final fit of up to 60 epochs with early
stopping, one torch thread, each a fresh process in a fresh temporary SQLite store. The pipeline
runs with the other families and the report off (the plain script has neither) and keeps what the
script lacks: the floor, the bootstrap comparison, the plots, the data card and the gate. The two
alternate, the order rotating each round. Printed: the median wall time of each, and their ratio
(target: at most 1.10); also the pipeline's time to its first line of output.

    python -m bench.vs_plain [--quick] [--repeats N]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import ROOT, Report, alternate, markdown_table, median, parser, spread

TARGET = 1.10


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)
    env["PYTHONPATH"] = str(ROOT)
    return env


def pipeline_command(folder: Path, trials: int, epochs: int, threads: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pipeline",
        "candidates=[network]",
        "tracking.report=false",
        f"tracking.uri=sqlite:///{folder}/mlflow.db",
        f"tune.n_trials={trials}",
        f"tune.epochs={epochs}",
        f"train.threads={threads}",
        f"hydra.run.dir={folder}/outputs",
    ]


def plain_command(folder: Path, trials: int, epochs: int, threads: int) -> list[str]:
    return [
        sys.executable,
        str(ROOT / "bench" / "plain_script.py"),
        f"--tracking-uri=sqlite:///{folder}/mlflow.db",
        f"--trials={trials}",
        f"--epochs={epochs}",
        f"--threads={threads}",
    ]


class Timed:
    """Each call runs a command in a new folder; it keeps the wall time and the first output line's."""

    def __init__(self, make: object, root: Path, label: str, trials: int, epochs: int, threads: int):
        self.make, self.root, self.label = make, root, label
        self.trials, self.epochs, self.threads = trials, epochs, threads
        self.first_output: list[float] = []
        self.calls = 0

    def __call__(self) -> float:
        self.calls += 1
        folder = self.root / f"{self.label}-{self.calls}"
        folder.mkdir()
        started = time.perf_counter()
        process = subprocess.Popen(
            self.make(folder, self.trials, self.epochs, self.threads),  # type: ignore[operator]
            cwd=folder,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert process.stdout is not None
        first, lines = None, []
        for line in process.stdout:
            first = first or time.perf_counter() - started
            lines.append(line)
        if process.wait() != 0:
            raise SystemExit(f"{self.label} failed:\n{''.join(lines[-20:])}")
        self.first_output.append(first or float("nan"))
        return time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--epochs", type=int, default=30)
    args = p.parse_args(argv)
    repeats = args.repeats or (2 if args.quick else 5)
    trials, epochs = (4, 5) if args.quick else (args.trials, args.epochs)
    report = Report(
        "vs_plain",
        "Against the plain script",
        args.quick,
        {"trials": trials, "epochs": epochs, "threads": args.threads, "repeats": repeats},
    )
    with tempfile.TemporaryDirectory(prefix="bench-vs-plain-") as tmp:
        root = Path(tmp)
        pipeline = Timed(pipeline_command, root, "pipeline", trials, epochs, args.threads)
        plain = Timed(plain_command, root, "plain", trials, epochs, args.threads)
        times = alternate({"pipeline": pipeline, "plain script": plain}, repeats, warmup=1)
    ratio = median(times["pipeline"]) / median(times["plain script"])
    rows = [
        [name, median(t), spread(t), median(timed.first_output[1:])]
        for (name, t), timed in zip(times.items(), (pipeline, plain), strict=True)
    ]
    report.section(
        "Wall time of the whole command (s)",
        markdown_table(["command", "median", "min-max", "first output line (median)"], rows),
    )
    report.headline("pipeline / plain script, median wall", round(ratio, 3), f"<= {TARGET}", ratio <= TARGET)
    report.write()


if __name__ == "__main__":
    main()
