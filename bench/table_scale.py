"""Table scale: the prepare stage's time and peak memory on tables of 100k, 300k and 1M rows x 50
columns (40 numeric with some missing values, 10 categorical text columns), beside the table's
in-memory size, and a check that the largest table prepares and trains one epoch.

The script writes the tables as Parquet in a temporary folder. Each measurement runs in a fresh
child process (`python -m bench.table_scale --child ...`), so its peak resident memory is its
own: the parent reads it from the child's resource usage (os.wait4, the per-child form of
getrusage(RUSAGE_CHILDREN)). The child times reading the file and pipeline.stages.prepare.prepare
apart, and measures the table's pandas size (memory_usage(deep=True)) outside both timers.

    python -m bench.table_scale [--quick] [--repeats N] [--sizes 100000,300000,1000000]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import ROOT, Report, markdown_table, median, parser, spread

N_NUMERIC, N_CATEGORICAL = 40, 10


def make_table(rows: int, seed: int = 0) -> Any:
    """A binary-classification table: numeric columns (1% missing), categorical text columns
    with 5 to 50 levels (skewed, some rare) and a target that depends on both."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    columns: dict[str, Any] = {}
    signal = np.zeros(rows)
    for i in range(N_NUMERIC):
        values = rng.normal(loc=i % 7, scale=1 + i % 3, size=rows)
        signal += values * rng.normal() / (1 + i % 3)
        values[rng.random(rows) < 0.01] = np.nan
        columns[f"num_{i:02d}"] = values
    for i in range(N_CATEGORICAL):
        levels = 5 + 5 * i
        weights = 1.0 / np.arange(1, levels + 1)
        codes = rng.choice(levels, size=rows, p=weights / weights.sum())
        signal += (codes % 3 - 1) * 0.5
        columns[f"cat_{i:02d}"] = np.array([f"level_{k}" for k in range(levels)], dtype=object)[codes]
    signal = np.nan_to_num(signal)
    columns["target"] = np.where(
        signal + rng.normal(scale=signal.std(), size=rows) > np.median(signal), "yes", "no"
    )
    return pd.DataFrame(columns)


def write_tables(folder: Path, sizes: list[int]) -> dict[int, Path]:
    frame = make_table(max(sizes))
    paths = {}
    for rows in sizes:
        path = folder / f"table_{rows}.parquet"
        frame.head(rows).to_parquet(path, index=False)
        paths[rows] = path
    del frame
    return paths


def run_child(path: Path, threads: int, train: bool) -> dict[str, Any]:
    """One measurement in a fresh process; returns its report plus its peak RSS."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        result_path = Path(handle.name)
    command = [
        sys.executable,
        "-m",
        "bench.table_scale",
        "--child",
        str(path),
        "--result",
        str(result_path),
        "--threads",
        str(threads),
    ] + (["--train"] if train else [])
    process = subprocess.Popen(command, cwd=ROOT)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    try:
        if process.returncode != 0:
            raise RuntimeError(f"the child measuring {path.name} exited with {process.returncode}")
        out = json.loads(result_path.read_text())
    finally:
        result_path.unlink(missing_ok=True)
    out["peak_rss_bytes"] = usage.ru_maxrss * 1024  # kilobytes on Linux
    return out


def child(path: Path, result: Path, threads: int, train: bool) -> None:
    """Inside the child: read, prepare (and optionally train one epoch), report."""
    import resource

    import psutil
    import torch

    from bench.common import compose, quiet
    from pipeline.metrics import resolve_objective
    from pipeline.stages.prepare import prepare, read_source
    from pipeline.training.loop import fit

    quiet()
    torch.set_num_threads(threads)
    baseline = psutil.Process().memory_info().rss
    cfg = compose(
        "data=table",
        f"data.path={path}",
        "data.target=target",
        "tracking.enabled=false",
        "stages=[prepare,train]",
        f"train.threads={threads}",
        "train.device=cpu",
        "train.epochs=1",
    )
    started = time.perf_counter()
    table = read_source(cfg.data)
    read_seconds = time.perf_counter() - started
    table_bytes = int(table.frame.memory_usage(deep=True).sum())
    started = time.perf_counter()
    prepared = prepare(cfg.data, cfg.seed, table)
    prepare_seconds = time.perf_counter() - started
    out: dict[str, Any] = {
        "rows": int(len(table.frame)),
        "columns": int(table.frame.shape[1]),
        "table_bytes": table_bytes,
        "baseline_rss_bytes": baseline,
        "read_seconds": read_seconds,
        "prepare_seconds": prepare_seconds,
        "features": int(prepared.features["train"].shape[1]),
        "sparse_features": bool(not isinstance(prepared.features["train"], np.ndarray)),
        "peak_after_prepare_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }
    if train:
        data = prepared.training_data()
        objective = resolve_objective(None, None, prepared.task)
        started = time.perf_counter()
        trained = fit(cfg.train, cfg.model, data, objective, int(cfg.seed), epochs=1)
        out["train_seconds"] = time.perf_counter() - started
        out["train_rows"] = int(data.x_train.shape[0])
        out["val_score"] = float(trained.best_score)
        out["metric"] = objective.metric
    result.write_text(json.dumps(out))


def gib(value: float) -> float:
    return value / 2**30


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--sizes", default=None, help="comma-separated row counts (default 100000,300000,1000000)")
    p.add_argument("--child", default=None, help=argparse_hidden())
    p.add_argument("--result", default=None, help=argparse_hidden())
    p.add_argument("--train", action="store_true", help=argparse_hidden())
    args = p.parse_args()
    if args.child:
        child(Path(args.child), Path(args.result), args.threads, args.train)
        return
    sizes = (
        [int(s) for s in args.sizes.split(",")]
        if args.sizes
        else ([2_000, 5_000, 20_000] if args.quick else [100_000, 300_000, 1_000_000])
    )
    repeats = args.repeats or (2 if args.quick else 3)
    report = Report(
        "table_scale",
        "Table scale: prepare time and peak memory against rows",
        args.quick,
        {
            "sizes": sizes,
            "columns": f"{N_NUMERIC} numeric + {N_CATEGORICAL} categorical",
            "repeats": repeats,
            "threads": args.threads,
        },
    )
    with tempfile.TemporaryDirectory(prefix="bench-tables-") as tmp:
        print(f"writing tables of {', '.join(map(str, sizes))} rows", flush=True)
        paths = write_tables(Path(tmp), sizes)
        found: dict[int, list[dict[str, Any]]] = {n: [] for n in sizes}
        for round_ in range(repeats):
            order = sizes[round_ % len(sizes) :] + sizes[: round_ % len(sizes)]
            for rows in order:
                out = run_child(paths[rows], args.threads, train=False)
                found[rows].append(out)
                print(
                    f"  round {round_ + 1}/{repeats} {rows} rows: read {out['read_seconds']:.2f}s, "
                    f"prepare {out['prepare_seconds']:.2f}s, "
                    f"peak {gib(out['peak_rss_bytes']):.2f} GiB",
                    flush=True,
                )
        rows_out = []
        for rows in sizes:
            runs = found[rows]
            total = [r["read_seconds"] + r["prepare_seconds"] for r in runs]
            table_bytes = runs[0]["table_bytes"]
            peak = median([r["peak_rss_bytes"] for r in runs])
            baseline = median([r["baseline_rss_bytes"] for r in runs])
            rows_out.append(
                [
                    rows,
                    median([r["read_seconds"] for r in runs]),
                    median([r["prepare_seconds"] for r in runs]),
                    median(total),
                    spread(total),
                    median(total) / rows * 1e6,
                    gib(table_bytes),
                    gib(peak),
                    peak / table_bytes,
                    (peak - baseline) / table_bytes,
                    runs[0]["features"],
                ]
            )
        small, large = sizes[0], sizes[-1]
        time_ratio = median([r["read_seconds"] + r["prepare_seconds"] for r in found[large]]) / median(
            [r["read_seconds"] + r["prepare_seconds"] for r in found[small]]
        )
        large_runs = found[large]
        peak_ratio = median([r["peak_rss_bytes"] for r in large_runs]) / large_runs[0]["table_bytes"]
        above_start = (
            median([r["peak_rss_bytes"] - r["baseline_rss_bytes"] for r in large_runs])
            / (large_runs[0]["table_bytes"])
        )
        report.section(
            "Prepare time and peak memory",
            f"Median of {repeats} alternating repeats, each in a fresh process. Peak is the "
            "child's maximum resident set (interpreter and libraries included); '(peak - start)' "
            "subtracts the resident set after imports.\n\n"
            + markdown_table(
                [
                    "rows",
                    "read s",
                    "prepare s",
                    "read+prepare s",
                    "range",
                    "us per row",
                    "table GiB (pandas deep)",
                    "peak RSS GiB",
                    "peak / table",
                    "(peak - start) / table",
                    "model features",
                ],
                rows_out,
            ),
        )
        report.headline(
            f"read+prepare time {large} / {small} rows (rows x{large / small:g})",
            round(time_ratio, 2),
            f"~{large / small:g} (linear)",
            time_ratio <= 1.5 * large / small,
        )
        report.headline(
            f"peak RSS / table size at {large} rows (interpreter and libraries included)",
            round(peak_ratio, 2),
            "about 3",
            peak_ratio <= 3.5,
        )
        report.headline(
            f"(peak RSS - RSS after imports) / table size at {large} rows",
            round(above_start, 2),
            "<= 3",
            above_start <= 3,
        )

        print(f"\n{large} rows: prepare and train one epoch", flush=True)
        try:
            trained = run_child(paths[large], args.threads, train=True)
        except RuntimeError as exc:
            report.headline(f"{large} rows prepare + 1 epoch completes", "no", "yes", False)
            report.note(str(exc))
        else:
            report.section(
                f"{large} rows: prepare, then one training epoch",
                markdown_table(
                    [
                        "rows",
                        "prepare s",
                        "train rows",
                        "1 epoch s (fit)",
                        f"val {trained['metric']}",
                        "peak after prepare GiB",
                        "peak with training GiB",
                    ],
                    [
                        [
                            large,
                            trained["read_seconds"] + trained["prepare_seconds"],
                            trained["train_rows"],
                            trained["train_seconds"],
                            trained["val_score"],
                            gib(trained["peak_after_prepare_bytes"]),
                            gib(trained["peak_rss_bytes"]),
                        ]
                    ],
                ),
            )
            report.headline(f"{large} rows prepare + 1 epoch completes", "yes", "yes", True)
            report.headline(
                f"{large} rows: 1 epoch seconds", round(trained["train_seconds"], 1), "info", None
            )
            report.headline(
                f"{large} rows: peak RSS with training GiB",
                round(gib(trained["peak_rss_bytes"]), 2),
                "info",
                None,
            )
    report.write()


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
