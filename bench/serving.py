"""Serving: latency of one-row and 1000-row requests to the served model (`mlflow models serve`
on a free loopback port) against the same predictions in process (pyfunc predict), and the
rows per second of batch scoring with `python -m pipeline.serving predict`.

A model is first trained and registered by a quick pipeline run on breast_cancer, in a
temporary store. Served and in-process calls alternate, after a warm-up; a served call is what
a client pays: building the JSON body, the HTTP round trip on a kept-alive connection, and
parsing the response. Served predictions are checked against the in-process ones.

    python -m bench.serving [--quick] [--requests N] [--threads N]
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    ROOT,
    Report,
    compose,
    fresh_store,
    markdown_table,
    median,
    parser,
    percentile,
    quiet,
    spread,
)

MODEL_NAME = "bench-serving"
TINY = [
    "tune.n_trials=2",
    "tune.epochs=3",
    "train.epochs=4",
    "candidates=[network]",
    "evaluate.bootstrap=50",
]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def register_model(root: Path, threads: int) -> tuple[str, str, Any]:
    """Run the whole pipeline with tiny budgets; returns (tracking URI, model URI, test rows)."""
    from pipeline.runner import run_pipeline

    uri = fresh_store(root / "store")
    cfg = compose(
        *TINY,
        f"tracking.uri={uri}",
        "tracking.experiment=bench-serving",
        f"registry.model_name={MODEL_NAME}",
        f"train.threads={threads}",
        f"tune.storage={root / 'store' / 'study.journal'}",
    )
    result = run_pipeline(cfg)
    decision = result.outputs["register"]
    assert decision.alias == "champion", decision.line()
    return uri, f"models:/{MODEL_NAME}@champion", result.outputs["prepare"].frames["test"]


class Server:
    """`mlflow models serve` in its own process group, stopped (that group only) on exit."""

    def __init__(self, model_uri: str, tracking_uri: str, log_path: Path, threads: int):
        self.port = free_port()
        bin_dir = str(Path(sys.executable).parent)
        env = {
            **os.environ,
            "MLFLOW_TRACKING_URI": tracking_uri,
            # the scoring server is started as `uvicorn ...` found through PATH
            "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
            "OMP_NUM_THREADS": str(threads),
            "MKL_NUM_THREADS": str(threads),
        }
        command = [
            sys.executable,
            "-m",
            "mlflow",
            "models",
            "serve",
            "-m",
            model_uri,
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
        ]
        self.log = log_path.open("wb")
        self.process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.log_path = log_path

    def wait_ready(self, timeout: float = 180.0) -> float:
        started = time.perf_counter()
        while time.perf_counter() - started < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}:\n{self.tail()}")
            try:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                connection.request("GET", "/ping")
                if connection.getresponse().status == 200:
                    connection.close()
                    return time.perf_counter() - started
            except OSError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"the server did not answer /ping within {timeout:.0f}s:\n{self.tail()}")

    def tail(self) -> str:
        self.log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-20:])

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)  # the group this script started
                self.process.wait(timeout=20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.process.wait(timeout=10)
        self.log.close()


def served_predict(connection: http.client.HTTPConnection, frame: Any) -> Any:
    import pandas as pd

    body = json.dumps({"dataframe_split": frame.to_dict(orient="split", index=False)})
    connection.request("POST", "/invocations", body=body, headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    payload = response.read()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}: {payload[:500]!r}")
    return pd.DataFrame(json.loads(payload)["predictions"])


def check_same(served: Any, local: Any) -> None:
    assert list(served["prediction"].astype(str)) == list(local["prediction"].astype(str)), "labels differ"
    probabilities = [c for c in local.columns if c.startswith("proba_")]
    assert np.allclose(
        served[probabilities].to_numpy(float), local[probabilities].to_numpy(float), atol=1e-6
    ), "probabilities differ"


def latency(report: Report, connection: Any, model: Any, rows: Any, size: int, requests: int) -> None:
    import pandas as pd

    repeats = -(-size // len(rows))
    frame = pd.concat([rows] * repeats, ignore_index=True).head(size) if size > 1 else None
    samples: dict[str, list[float]] = {"served": [], "in process": []}
    calls = {
        "served": lambda f: served_predict(connection, f),
        "in process": lambda f: model.predict(f),
    }
    print(
        f"\n{size}-row requests: {requests} served and {requests} in process, alternating",
        flush=True,
    )
    for i in range(requests + 5):  # the first five of each are a warm-up
        batch = rows.iloc[[i % len(rows)]] if size == 1 else frame
        order = list(calls) if i % 2 == 0 else list(calls)[::-1]
        for name in order:
            started = time.perf_counter()
            calls[name](batch)
            seconds = time.perf_counter() - started
            if i >= 5:
                samples[name].append(seconds)
    check_same(
        served_predict(connection, frame if size > 1 else rows),
        model.predict(frame if size > 1 else rows),
    )
    table = []
    for name, values in samples.items():
        table.append(
            [
                name,
                percentile(values, 50) * 1e3,
                percentile(values, 99) * 1e3,
                spread([v * 1e3 for v in values]),
                size / percentile(values, 50),
            ]
        )
    p50 = percentile(samples["served"], 50) / percentile(samples["in process"], 50)
    p99 = percentile(samples["served"], 99) / percentile(samples["in process"], 99)
    report.section(
        f"{size}-row requests",
        f"{requests} requests each, alternating served and in-process calls after 5 warm-up calls "
        "each. Served predictions equal the in-process ones.\n\n"
        + markdown_table(["path", "p50 ms", "p99 ms", "range ms", "rows/s at p50"], table)
        + f"\n\nserved / in process: p50 x{p50:.2f}, p99 x{p99:.2f}",
    )
    served_ms, local_ms = (percentile(samples[k], 50) * 1e3 for k in ("served", "in process"))
    report.headline(
        f"{size}-row request p50 ms: served (in process)",
        f"{served_ms:.1f} ({local_ms:.1f})",
        "info",
        None,
    )
    report.headline(f"{size}-row request p50 ratio served / in process", round(p50, 2), "info", None)
    report.headline(f"{size}-row request p99 ratio served / in process", round(p99, 2), "info", None)


def batch_scoring(
    report: Report,
    root: Path,
    tracking_uri: str,
    model_uri: str,
    model: Any,
    rows: Any,
    size: int,
    repeats: int,
    quick: bool = False,
) -> None:
    import pandas as pd

    if importlib.util.find_spec("pipeline.serving") is None:
        print("pipeline/serving.py not found: batch scoring skipped", flush=True)
        report.note("pipeline/serving.py does not exist yet: batch scoring was skipped")
        return
    frame = pd.concat([rows] * -(-size // len(rows)), ignore_index=True).head(size)
    source = root / "score.csv"
    frame.to_csv(source, index=False)
    command = [
        sys.executable,
        "-m",
        "pipeline.serving",
        "predict",
        "--input",
        str(source),
        "--output",
        str(root / "scored.csv"),
        "--model-uri",
        model_uri,
        f"tracking.uri={tracking_uri}",
    ]
    walls, reported, local = [], [], []
    print(f"\nbatch scoring {size} rows: pipeline.serving predict vs in-process predict", flush=True)
    warmup = 0 if quick else 1
    for round_ in range(warmup, repeats + 1):  # round 0 is a warm-up
        started = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
        wall = time.perf_counter() - started
        if done.returncode != 0:
            report.note(f"pipeline.serving predict failed ({done.returncode}): {done.stderr.strip()[-500:]}")
            report.headline("batch scoring with pipeline.serving predict", "failed", "runs", False)
            return
        found = re.search(r"\(([\d,.]+) rows/second", done.stdout)
        started = time.perf_counter()
        model.predict(frame)
        in_process = time.perf_counter() - started
        if round_ == 0:
            continue
        walls.append(wall)
        local.append(in_process)
        if found:
            reported.append(float(found.group(1).replace(",", "")))
        print(
            f"  round {round_}/{repeats}: command {wall:.2f}s, in process {in_process:.2f}s",
            flush=True,
        )
    scored = pd.read_csv(root / "scored.csv")
    assert len(scored) == size, f"{len(scored)} rows scored, expected {size}"
    table = [
        [
            "python -m pipeline.serving predict (whole command)",
            median(walls),
            spread(walls),
            size / median(walls),
        ],
        [
            "  its scoring loop (as it reports)",
            size / median(reported) if reported else None,
            "",
            median(reported) if reported else None,
        ],
        ["pyfunc predict in process", median(local), spread(local), size / median(local)],
    ]
    report.section(
        f"Batch scoring, {size} rows (CSV in, CSV out)",
        f"Median of {repeats} alternating repeat(s)"
        + (" (no warm-up: --quick)" if quick else " after a warm-up")
        + ". The whole command includes "
        "starting Python, loading the model from the registry, reading and writing the files.\n\n"
        + markdown_table(["path", "seconds", "range", "rows/s"], table),
    )
    report.headline(
        f"batch scoring rows/s, whole command ({size} rows)",
        round(size / median(walls)),
        "info",
        None,
    )
    if reported:
        report.headline(
            "batch scoring rows/s, scoring loop / in-process predict",
            f"{median(reported):,.0f} / {size / median(local):,.0f}",
            "info",
            None,
        )


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument(
        "--requests",
        type=int,
        default=None,
        help="timed requests per path (default 200, --quick 30)",
    )
    args = p.parse_args()
    quiet(mlflow=True)
    import mlflow
    import torch

    torch.set_num_threads(args.threads)
    requests = args.requests or (20 if args.quick else 200)
    batch_rows = 5_000 if args.quick else 100_000
    repeats = args.repeats or (1 if args.quick else 3)
    report = Report(
        "serving",
        "Serving: REST latency vs in process, and batch scoring",
        args.quick,
        {
            "requests": requests,
            "threads": args.threads,
            "batch_rows": batch_rows,
            "repeats": repeats,
            "data": "breast_cancer",
        },
    )
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        root = Path(tmp)
        print("registering a model (quick pipeline run on breast_cancer)", flush=True)
        tracking_uri, model_uri, rows = register_model(root, args.threads)
        mlflow.set_tracking_uri(tracking_uri)
        model = mlflow.pyfunc.load_model(model_uri)
        server = Server(model_uri, tracking_uri, root / "server.log", args.threads)
        try:
            ready = server.wait_ready()
            print(f"server ready on 127.0.0.1:{server.port} after {ready:.1f}s", flush=True)
            report.headline("server start-up until /ping answers, seconds", round(ready, 1), "info", None)
            connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
            latency(report, connection, model, rows, 1, requests)
            latency(report, connection, model, rows, 1000, max(10, requests // 4))
            connection.close()
        finally:
            server.stop()
        batch_scoring(report, root, tracking_uri, model_uri, model, rows, batch_rows, repeats, args.quick)
    report.write()


if __name__ == "__main__":
    main()
