"""`make serve` and `make predict`: the champion model behind a REST endpoint, or over a file.

    python -m pipeline.serving serve [--port 5001] [--host 127.0.0.1] [--model-uri URI] [overrides]
    python -m pipeline.serving predict --input rows.csv --output preds.csv [--model-uri URI]
                                       [overrides]

The model is `models:/<registry model name>@champion` unless `--model-uri` or `serve.model_uri`
names another; the model name and the tracking store come from the same Hydra config (and
overrides, e.g. `data=wine registry.model_name=...`) as the pipeline's."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from pipeline.errors import PipelineError

CONFIG_DIR = Path(__file__).resolve().parent.parent.parent / "conf"
ALIAS_URI = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[^/@]+)$")


class ServingError(PipelineError):
    """A serving or batch-scoring problem the user can fix."""


@dataclass
class Target:
    """The model to serve or score with, and the store it lives in."""

    model_uri: str
    tracking_uri: str
    description: str  # e.g. "breast_cancer-mlp v3 (alias champion)"


def compose_config(overrides: list[str]) -> DictConfig:
    """The pipeline's configuration, composed from conf/ with command-line overrides."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from pipeline.config import register_schemas

    register_schemas()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return compose(config_name="config", overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ServingError(f"invalid override(s) {' '.join(overrides)}: {first}") from None


def default_model_uri(cfg: DictConfig) -> str:
    from pipeline.stages.register import CHAMPION, model_name

    if cfg.serve.model_uri:
        return str(cfg.serve.model_uri)
    if cfg.data.name == "table" and not cfg.data.path and not cfg.registry.model_name:
        raise ServingError(
            "data=table needs data.path=<the table's file> (its champion is registered under the "
            "file's name) or registry.model_name=<name>"
        )
    return f"models:/{model_name(cfg)}@{CHAMPION}"


def resolve_target(cfg: DictConfig, model_uri: str | None = None) -> Target:
    """Point MLflow at the configured store and check that the model exists (that an alias
    names a version)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from pipeline.tracking.provenance import mask
    from pipeline.tracking.store import local_store_dir, tracking_uri

    uri = model_uri or default_model_uri(cfg)
    store = tracking_uri(cfg.tracking.uri)
    mlflow.set_tracking_uri(store)
    found = ALIAS_URI.match(uri)
    if found is None:
        return Target(uri, store, uri)
    name, alias = found["name"], found["alias"]
    hint = "run make pipeline first" if alias == "champion" else "register one first"
    where = f"registered model {name!r} in {mask(store)}"
    store_dir = local_store_dir(store)
    if store_dir is not None and not Path(store[len("sqlite:///") :]).is_file():
        raise ServingError(f"no model has alias {alias}: {hint} (no tracking store at {mask(store)})")
    try:
        version = MlflowClient().get_model_version_by_alias(name, alias)
    except mlflow.exceptions.MlflowException:
        raise ServingError(f"no model has alias {alias}: {hint} ({where})") from None
    except Exception as exc:  # noqa: BLE001 - an unreachable server or a broken store
        raise ServingError(f"cannot read the model registry at {mask(store)}: {type(exc).__name__}") from None
    return Target(uri, store, f"{name} v{version.version} (alias {alias})")


def child_env(tracking: str) -> dict[str, str]:
    """The environment of `mlflow models serve`: the store, and this interpreter's bin dir first on
    PATH (the scoring server is started as `uvicorn ...` found through PATH)."""
    bin_dir = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "")
    return {
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # no progress bar for the model download
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking,
        "PATH": bin_dir + (os.pathsep + path if path else ""),
    }


def serve_command(model_uri: str, host: str, port: int) -> list[str]:
    cli = shutil.which("mlflow", path=str(Path(sys.executable).parent))
    base = [cli] if cli else [sys.executable, "-m", "mlflow"]
    return [
        *base,
        "models",
        "serve",
        "-m",
        model_uri,
        "-h",
        host,
        "-p",
        str(port),
        "--env-manager",
        "local",
    ]


def serve(cfg: DictConfig, host: str | None, port: int | None, model_uri: str | None) -> None:
    """Replace this process with `mlflow models serve` on the chosen model."""
    host = host or cfg.serve.host
    port = int(port if port is not None else cfg.serve.port)
    if not 1 <= port <= 65535:
        raise ServingError(f"port {port} is out of range; it must be 1-65535")
    target = resolve_target(cfg, model_uri)
    command = serve_command(target.model_uri, host, port)
    print(
        f"serving {target.description} on http://{host}:{port}/invocations "
        f'(POST JSON {{"dataframe_split": {{"columns": [...], "data": [[...]]}}}}); Ctrl-C stops',
        flush=True,
    )
    sys.stderr.flush()
    os.execve(command[0], command, child_env(target.tracking_uri))


# a registered model declares its numeric feature columns Any (see packaging.signature)
NUMERIC_KINDS = ("double", "float", "long", "integer", "Any")


def _read_input(path: Path, schema: Any) -> Any:
    """The rows to score, with each model input column in the type the signature declares."""
    import pandas as pd

    if not path.is_file():
        raise ServingError(f"input file {str(path)!r} does not exist; give --input <csv or parquet file>")
    suffix = path.suffix.lower()
    names = schema.input_names() if schema is not None else []
    types = [getattr(t, "name", str(t)) for t in schema.input_types()] if schema is not None else []
    kinds = dict(zip(names, types, strict=True))
    text_columns = {name: "object" for name, kind in kinds.items() if kind == "string"}
    try:
        if suffix in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
        else:
            sep = "\t" if suffix == ".tsv" else ","
            frame = pd.read_csv(path, sep=sep, dtype=text_columns or None, low_memory=False)
    except pd.errors.EmptyDataError:
        raise ServingError(f"input file {str(path)!r} is empty; it needs a header and rows") from None
    except Exception as exc:  # noqa: BLE001 - any reader failure means the same to the user
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ServingError(f"input file {str(path)!r} could not be read: {first}") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    if frame.empty:
        raise ServingError(f"input file {str(path)!r} has no rows")
    missing = [c for c in names if c not in frame.columns]
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise ServingError(f"input file {str(path)!r} lacks the model's input column(s): {shown}")
    for name, kind in kinds.items():
        if kind in NUMERIC_KINDS:
            values = pd.to_numeric(frame[name], errors="coerce")
            bad = values.isna() & frame[name].notna()
            if bad.any():
                row = int(bad.to_numpy().nonzero()[0][0])
                raise ServingError(
                    f"column {name!r} must be numeric; data row {row + 1} holds {frame[name].iloc[row]!r}"
                )
            frame[name] = values.astype("float64") if kind not in ("long", "integer") else values
        elif kind == "string":
            column = frame[name].astype(object)
            frame[name] = column.where(column.notna(), None)
    return frame


def predict(cfg: DictConfig, input_path: Path, output_path: Path, model_uri: str | None) -> dict[str, Any]:
    """Score a CSV/Parquet file in batches of serve.batch_size; write prediction (and proba_*)
    columns, led by the input's id columns when it has any. Returns what it did."""
    import mlflow
    import pandas as pd

    target = resolve_target(cfg, model_uri)
    if not input_path.is_file():
        raise ServingError(
            f"input file {str(input_path)!r} does not exist; give --input <csv or parquet file>"
        )
    try:
        model = mlflow.pyfunc.load_model(target.model_uri)
    except Exception as exc:  # noqa: BLE001 - a wrong URI, a missing artifact
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ServingError(f"cannot load model {target.model_uri}: {first}") from None
    schema = model.metadata.get_input_schema()
    frame = _read_input(input_path, schema)
    inputs = frame[schema.input_names()] if schema is not None else frame
    batch = int(cfg.serve.batch_size)
    if batch < 1:
        raise ServingError(f"serve.batch_size={batch} is out of range; it must be >= 1")
    started = time.perf_counter()
    parts = []
    for start in range(0, len(inputs), batch):
        try:
            parts.append(model.predict(inputs.iloc[start : start + batch]))
        except mlflow.exceptions.MlflowException as exc:
            first = str(exc.message).strip().splitlines()[0]
            raise ServingError(
                f"the model rejected rows {start + 1}-{min(start + batch, len(inputs))}: {first}"
            ) from None
    seconds = time.perf_counter() - started
    predictions = pd.DataFrame(pd.concat(parts) if len(parts) > 1 else parts[0]).reset_index(drop=True)
    out = _with_ids(frame, predictions, schema.input_names() if schema is not None else [])
    output_path.parent.mkdir(parents=True, exist_ok=True)
    if output_path.suffix.lower() in (".parquet", ".pq"):
        out.to_parquet(output_path, index=False)
    else:
        out.to_csv(output_path, index=False)
    rate = len(out) / seconds if seconds > 0 else float("inf")
    print(
        f"predict: {len(out)} rows scored with {target.description} in {seconds:.2f}s "
        f"({rate:,.0f} rows/second, batches of {batch}) -> {output_path}",
        flush=True,
    )
    return {
        "rows": len(out),
        "seconds": seconds,
        "rows_per_second": rate,
        "columns": list(out.columns),
    }


def _with_ids(frame: Any, predictions: Any, inputs: list[str]) -> Any:
    """The predictions, led by the input's id columns (those that are not model inputs)."""
    import pandas as pd

    from pipeline.data.inspection import ID_NAME

    ids = [c for c in frame.columns if ID_NAME.search(c) and c not in predictions.columns and c not in inputs]
    return pd.concat([frame[ids].reset_index(drop=True), predictions], axis=1) if ids else predictions


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(
        prog="python -m pipeline.serving",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = main.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="serve the model over REST (mlflow models serve)")
    serve_parser.add_argument("--port", type=int, default=None, help="default: serve.port (5001)")
    serve_parser.add_argument("--host", default=None, help="default: serve.host (127.0.0.1)")
    predict_parser = commands.add_parser("predict", help="score a CSV or Parquet file")
    predict_parser.add_argument("--input", required=True, help="rows to score (.csv or .parquet)")
    predict_parser.add_argument("--output", default="predictions.csv", help="where predictions go")
    for sub in (serve_parser, predict_parser):
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
        if args.command == "serve":
            serve(cfg, args.host, args.port, args.model_uri)
        else:
            if not args.input:
                raise ServingError("give --input <csv or parquet file> (make predict INPUT=rows.csv)")
            from pipeline.console import quiet_libraries

            quiet_libraries()
            predict(cfg, Path(args.input), Path(args.output or "predictions.csv"), args.model_uri)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
