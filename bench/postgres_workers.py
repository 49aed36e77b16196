"""Distributed tuning: trials per minute with 1, 2 and 4 worker processes (`python -m pipeline
stages=[tune]`, as on separate machines) sharing one study in PostgreSQL and one MLflow tracking
server, both started here on loopback."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import RESULTS, ROOT, fmt, load_average, markdown_table, parser


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--workers", default="1,2,4", help="comma-separated worker counts")
    p.add_argument("--trials", type=int, default=None, help="trials per study (default 16, --quick 6)")
    args = p.parse_args()
    trials = args.trials or (6 if args.quick else 16)
    epochs = 5 if args.quick else 10
    counts = [int(c) for c in args.workers.split(",")]

    from pipeline.infra import PostgresCluster, TrackingServer, free_port, postgres_available

    if not postgres_available():
        print("PostgreSQL is not installed: skipping")
        return
    import optuna

    cluster = PostgresCluster().start()
    tmp = Path(tempfile.mkdtemp(prefix="bench-pg-"))
    server = TrackingServer(cluster.database_url("pipeline"), str(tmp / "artifacts"), free_port()).start()
    storage = cluster.database_url("optuna")
    common = [
        f"tracking.uri={server.url}",
        "tracking.experiment=bench",
        f"train.threads={args.threads}",
        "candidates=[network]",
    ]
    rows = []
    try:
        subprocess.run(
            [sys.executable, "-m", "pipeline", "stages=[prepare]", *common, f"hydra.run.dir={tmp / 'prep'}"],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        for count in counts:
            study = f"bench-{count}-workers"
            started = time.perf_counter()
            workers = [
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "pipeline",
                        "stages=[tune]",
                        *common,
                        f"tune.storage={storage}",
                        f"tune.study_name={study}",
                        f"tune.n_trials={trials}",
                        f"tune.epochs={epochs}",
                        "tune.pruner=none",
                        f"hydra.run.dir={tmp / study / str(i)}",
                    ],
                    cwd=ROOT,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                )
                for i in range(count)
            ]
            for worker in workers:
                _, err = worker.communicate(timeout=1800)
                if worker.returncode != 0:
                    raise SystemExit(f"a worker failed: {err.decode()[-500:]}")
            wall = time.perf_counter() - started
            done = [
                t
                for t in optuna.load_study(study_name=study, storage=storage).get_trials()
                if t.state.name in ("COMPLETE", "PRUNED")
            ]
            first = min(t.datetime_start for t in done)
            last = max(t.datetime_complete for t in done)
            search = (last - first).total_seconds()
            rows.append(
                [count, len(done), fmt(wall), fmt(len(done) / wall * 60), fmt(len(done) / search * 60)]
            )
            print(f"{count} worker(s): {len(done)} trials in {wall:.1f}s", flush=True)
    finally:
        server.stop()
        cluster.stop()
    table = markdown_table(
        ["workers", "trials", "wall s (start-up included)", "trials/min", "trials/min (search only)"], rows
    )
    report = (
        f"# Distributed tuning against PostgreSQL\n\n- data breast_cancer, {trials} trials x {epochs} epochs, "
        f"{args.threads} thread(s) per worker, no pruning; load average {load_average()}\n\n{table}\n"
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "postgres_workers.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
