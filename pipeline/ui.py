"""`make ui`: the MLflow UI on 127.0.0.1 over the tracking store, printing the runs-table link."""

from __future__ import annotations

import argparse
import os
import shutil
import sys

from pipeline.errors import PipelineError
from pipeline.ports import check_free

# MLflow's server warns about its own use of Starlette on every start; the person needs the link
QUIET_SERVER = "ignore::DeprecationWarning,ignore::FutureWarning,ignore::UserWarning"


def server_environment() -> dict[str, str]:
    """An MLflow server's environment: quiet, and without MLflow's job runner (for GenAI judges and
    trace roll-ups, which this project does not use), a handful of processes that start with the
    server and cost seconds of CPU and memory each."""
    return {**os.environ, "PYTHONWARNINGS": QUIET_SERVER, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def _local_file(store: str) -> str | None:
    """The file of a local SQLite store, else None (pipeline.tracking.store imports MLflow)."""
    return store[len("sqlite:///") :] if store.startswith("sqlite:///") else None


def _experiment_id(store: str, name: str) -> str | None:
    """The id of the active experiment `name`, or None. A local store is read directly (MLflow's
    experiments table, read-only): importing MLflow for it would delay the link by seconds, and
    the server that follows imports it anyway."""
    if (file := _local_file(store)) is not None:
        import sqlite3
        from contextlib import closing

        try:
            with closing(sqlite3.connect(f"file:{file}?mode=ro", uri=True)) as db:
                found = db.execute(
                    "SELECT experiment_id FROM experiments WHERE name = ? AND lifecycle_stage = 'active'",
                    (name,),
                ).fetchone()
        except sqlite3.DatabaseError:  # not a store yet (the server says what is wrong with it)
            return None
        return str(found[0]) if found else None
    from mlflow.tracking import MlflowClient

    found = MlflowClient(tracking_uri=store).get_experiment_by_name(name)
    return found.experiment_id if found and found.lifecycle_stage == "active" else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend-store-uri", required=True)
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--experiment", default="pipeline")
    args = parser.parse_args()
    try:
        check_free("127.0.0.1", args.port, "make ui UI_PORT=<port>")
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(exc.exit_code)

    experiment_id = "0"
    local = _local_file(args.backend_store_uri)
    if local is not None and not os.path.exists(local):
        print("no tracking store yet: run `make pipeline` first", file=sys.stderr)
    else:
        experiment_id = _experiment_id(args.backend_store_uri, args.experiment) or "0"
    url = f"http://127.0.0.1:{args.port}"
    print(f"MLflow UI: {url}/#/experiments/{experiment_id}?workflowType=machine_learning", flush=True)
    mlflow_cli = shutil.which("mlflow", path=os.path.dirname(sys.executable)) or "mlflow"
    command = [
        mlflow_cli, "server", "--backend-store-uri", args.backend_store_uri,
        "--host", "127.0.0.1", "--port", str(args.port), "--workers", "1",
    ]  # fmt: skip
    os.execve(mlflow_cli, command, server_environment())


if __name__ == "__main__":
    main()
