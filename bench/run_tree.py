"""The run tree of the newest pipeline run in a store, as comparable JSON: every run's name,
params, tags, metric keys and values, and artifact names, with what differs between any two runs
of the same work taken out (run ids become the run's place in the tree; timings, process ids and
timestamps are dropped). Two stores are compared side by side with --compare.

    python -m bench.run_tree --store /tmp/a/mlflow.db [--compare /tmp/b/mlflow.db]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any

from mlflow.tracking import MlflowClient

VOLATILE_TAGS = re.compile(r"^(mlflow\.|pid$|host$|git\.|killed\.|model\.uri$)")
VOLATILE_METRICS = re.compile(r"(seconds|_time)$")
VOLATILE_PARAMS = re.compile(r"^version\.")


def _artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> list[str]:
    names = []
    for item in client.list_artifacts(run_id, path):
        if item.is_dir:
            if item.path.endswith("/code") or item.path == "model/code":
                names.append(item.path + "/")  # the bundled package: its files follow the code
                continue
            names += _artifacts(client, run_id, item.path)
        else:
            names.append(item.path)
    return sorted(names)


def tree(store: str, experiment: str = "pipeline") -> dict[str, Any]:
    client = MlflowClient(tracking_uri=f"sqlite:///{store}" if "://" not in store else store)
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id], max_results=5000)
    by_id = {r.info.run_id: r for r in runs}
    parent = max((r for r in runs if r.data.tags.get("stage") == "pipeline"), key=lambda r: r.info.start_time)

    def place(run: Any) -> str:
        up = run.data.tags.get("mlflow.parentRunId")
        return (place(by_id[up]) + "/" if up in by_id else "") + (run.info.run_name or "?")

    names = {rid: place(r) for rid, r in by_id.items()}

    def clean(value: str) -> str:
        for rid, name in names.items():
            value = value.replace(rid, f"<{name}>")
        return value

    def describe(run: Any) -> dict[str, Any]:
        data = run.data
        return {
            "status": run.info.status,
            "params": {k: clean(v) for k, v in data.params.items() if not VOLATILE_PARAMS.search(k)},
            "tags": {k: clean(v) for k, v in data.tags.items() if not VOLATILE_TAGS.search(k)},
            "metrics": {k: round(v, 6) for k, v in data.metrics.items() if not VOLATILE_METRICS.search(k)},
            "artifacts": _artifacts(client, run.info.run_id),
        }

    family = {parent.info.run_id}
    changed = True
    while changed:
        more = {rid for rid, r in by_id.items() if r.data.tags.get("mlflow.parentRunId") in family}
        changed = bool(more - family)
        family |= more
    return {names[rid]: describe(by_id[rid]) for rid in sorted(family, key=lambda r: names[r])}


def differences(a: Any, b: Any, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        found = []
        for key in sorted(set(a) | set(b)):
            if key not in a or key not in b:
                found.append(f"{path}/{key}: only in {'second' if key not in a else 'first'}")
            else:
                found += differences(a[key], b[key], f"{path}/{key}")
        return found
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", required=True, help="path of an SQLite store, or a tracking URI")
    p.add_argument("--compare", help="a second store: print what differs")
    p.add_argument("--experiment", default="pipeline")
    args = p.parse_args()
    first = tree(args.store, args.experiment)
    if not args.compare:
        print(json.dumps(first, indent=2, sort_keys=True))
        return 0
    found = differences(first, tree(args.compare, args.experiment))
    print("\n".join(found) if found else f"identical: {len(first)} runs")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
