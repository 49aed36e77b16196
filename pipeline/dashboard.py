"""`make dashboard`: optuna-dashboard on the study storage the pipeline used, found the way the
tune stage finds it (tune.storage, else $OPTUNA_STORAGE, else the journal beside the local MLflow
store), so the user never retypes it.

    python -m pipeline.dashboard [--port 8080] [--storage URL_OR_FILE] [overrides]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.ports import check_free


def study_storage(overrides: list[str], given: str | None = None) -> str:
    from pipeline.config.overrides import compose_checked
    from pipeline.tracking.provenance import apply_credentials
    from pipeline.tracking.store import local_store_dir, tracking_uri
    from pipeline.tuning.study import storage_location

    if given:
        return given
    cfg = compose_checked(overrides)
    apply_credentials(cfg.tracking.credentials)
    location = storage_location(cfg.tune, local_store_dir(tracking_uri(cfg.tracking.uri)))
    if "://" not in location and not Path(location).is_file():
        raise PipelineError(f"no study storage yet at {location}: run make pipeline or make sweep first")
    return location


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--storage", default=None, help="default: where the tune stage keeps its studies")
    parser.add_argument(
        "overrides", nargs="*", help="Hydra overrides, e.g. tracking.uri=... tune.storage=..."
    )
    args = parser.parse_args(argv)
    try:
        storage = study_storage(args.overrides, args.storage or None)
        check_free("127.0.0.1", args.port, "make dashboard DASHBOARD_PORT=<port>")
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(exc.exit_code)
    from pipeline.tracking.provenance import mask
    from pipeline.ui import server_environment

    print(f"optuna-dashboard: http://127.0.0.1:{args.port} (studies in {mask(storage)})", flush=True)
    command = str(Path(sys.executable).parent / "optuna-dashboard")
    os.execve(
        command, [command, storage, "--host", "127.0.0.1", "--port", str(args.port)], server_environment()
    )


if __name__ == "__main__":
    main()
