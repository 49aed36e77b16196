"""`make ui`: the MLflow UI on 127.0.0.1 over the tracking store, printing the runs-table link."""

from __future__ import annotations

import argparse
import os
import shutil
import sys


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend-store-uri", required=True)
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--experiment", default="pipeline")
    args = parser.parse_args()

    import mlflow

    experiment_id = "0"
    if args.backend_store_uri.startswith("sqlite:///") and not os.path.exists(args.backend_store_uri[10:]):
        print("no tracking store yet: run `make pipeline` first", file=sys.stderr)
    else:
        mlflow.set_tracking_uri(args.backend_store_uri)
        found = mlflow.tracking.MlflowClient().get_experiment_by_name(args.experiment)
        experiment_id = found.experiment_id if found else "0"
    url = f"http://127.0.0.1:{args.port}"
    print(f"MLflow UI: {url}/#/experiments/{experiment_id}?workflowType=machine_learning", flush=True)
    mlflow_cli = shutil.which("mlflow", path=os.path.dirname(sys.executable)) or "mlflow"
    os.execv(
        mlflow_cli,
        [
            mlflow_cli,
            "server",
            "--backend-store-uri",
            args.backend_store_uri,
            "--host",
            "127.0.0.1",
            "--port",
            str(args.port),
        ],
    )


if __name__ == "__main__":
    main()
