"""`make serve`, `make predict` and `make dockerfile`: the champion behind a REST endpoint, over a
file, or in a Docker build folder.

    python -m pipeline.serving serve [--port 5001] [--host 127.0.0.1] [--model-uri URI] [overrides]
    python -m pipeline.serving predict --input rows.csv --output preds.csv [--model-uri URI] [overrides]
    python -m pipeline.serving dockerfile [--output dockerfile] [--model-uri URI] [overrides]

The model is `models:/<registry model name>@champion` unless `--model-uri` or `serve.model_uri`
names another; the model name and the tracking store come from the same Hydra config (and
overrides, e.g. `data=wine registry.model_name=...`) as the pipeline's."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from omegaconf import DictConfig

from pipeline.errors import PipelineError
from pipeline.serving.target import ServingError, compose_config, default_model_uri, load, resolve_target

__all__ = ["ServingError", "compose_config", "default_model_uri", "main", "resolve_target"]


def child_env(tracking: str) -> dict[str, str]:
    """The environment of MLflow's own tools: the store, this interpreter's bin dir first on PATH,
    and no warnings about MLflow's own dependencies."""
    from pipeline.ui import QUIET_SERVER

    bin_dir = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "")
    return {
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # no progress bar for the model download
        "PYTHONWARNINGS": QUIET_SERVER,
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking,
        "PATH": bin_dir + (os.pathsep + path if path else ""),
    }


def serve(cfg: DictConfig, host: str | None, port: int | None, model_uri: str | None) -> None:
    """Load the model once, then answer requests until stopped (Ctrl-C)."""
    import uvicorn

    from pipeline.ports import check_free
    from pipeline.serving.app import Limits, build_app

    host = host or cfg.serve.host
    port = int(port if port is not None else cfg.serve.port)
    check_free(host, port, "make serve SERVE_PORT=<port>")
    target = resolve_target(cfg, model_uri)
    limits = Limits(int(cfg.serve.max_request_mb * 2**20), int(cfg.serve.max_rows))
    app = build_app(load(target), limits)
    print(
        f"serving {target.description} on http://{host}:{port}/invocations "
        f'(POST JSON {{"dataframe_split": {{"columns": [...], "data": [[...]]}}}} or CSV); Ctrl-C stops',
        flush=True,
    )
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(
        prog="python -m pipeline.serving",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = main.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="serve the model over REST")
    serve_parser.add_argument("--port", type=int, default=None, help="default: serve.port (5001)")
    serve_parser.add_argument("--host", default=None, help="default: serve.host (127.0.0.1)")
    predict_parser = commands.add_parser("predict", help="score a CSV or Parquet file")
    predict_parser.add_argument("--input", required=True, help="rows to score (.csv or .parquet)")
    predict_parser.add_argument("--output", default="predictions.csv", help="where predictions go")
    image_parser = commands.add_parser("dockerfile", help="a Docker build folder for the model")
    image_parser.add_argument("--output", default="dockerfile", help="the folder to write")
    for sub in (serve_parser, predict_parser, image_parser):
        sub.add_argument(
            "--model-uri",
            default=None,
            help="default: serve.model_uri, else models:/<registry model name>@champion",
        )
        sub.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. data=wine registry.model_name=x")
    return main


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        cfg = compose_config(args.overrides)
        from pipeline.console import quiet_libraries

        quiet_libraries()
        if args.command == "serve":
            serve(cfg, args.host, args.port, args.model_uri)
        elif args.command == "predict":
            from pipeline.serving.batch import predict

            if not args.input:
                raise ServingError("give --input <csv or parquet file> (make predict INPUT=rows.csv)")
            predict(cfg, Path(args.input), Path(args.output or "predictions.csv"), args.model_uri)
        else:
            from pipeline.serving.image import dockerfile

            dockerfile(cfg, Path(args.output), args.model_uri)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)


def command() -> None:
    """`python -m pipeline.serving`: `main` in a process of its own, which starts the way a
    pipeline command does (see `pipeline.startup`) and ends without the seconds of module
    teardown (see `pipeline.shutdown`)."""
    from pipeline.shutdown import run_then_exit
    from pipeline.startup import defer_full_collections, import_scipy_ufuncs_first

    defer_full_collections()  # until the model is loaded
    import_scipy_ufuncs_first()
    run_then_exit(main)


if __name__ == "__main__":
    command()
