"""Run every benchmark, each as its own process (`python -m bench.<name>`), go on past failures,
and print one table of the headline numbers (also written to bench/results/summary.md).

    python -m bench.run_all [--only a,b] [--skip a,b] [flags passed to every benchmark]
    make bench ARGS="--quick"

Flags other than --only and --skip (e.g. --quick, --threads 2, --repeats 5) go to every script.
The exit status is 1 when a benchmark failed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from bench.common import RESULTS, ROOT, fmt, markdown_table, verdict

BENCHMARKS = (
    "vs_plain",
    "training_speed",
    "tracking_overhead",
    "tuning",
    "table_scale",
    "serving",
    "postgres_workers",
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default="", help=f"comma-separated subset of {', '.join(BENCHMARKS)}")
    p.add_argument("--skip", default="", help="comma-separated benchmarks to leave out")
    args, passed = p.parse_known_args(argv)
    chosen = [b for b in BENCHMARKS if not args.only or b in args.only.split(",")]
    chosen = [b for b in chosen if b not in args.skip.split(",")]
    unknown = {b for b in (args.only + "," + args.skip).split(",") if b} - set(BENCHMARKS)
    if unknown:
        p.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}; known: {', '.join(BENCHMARKS)}")

    RESULTS.mkdir(parents=True, exist_ok=True)
    outcomes: dict[str, tuple[int, float]] = {}
    for name in chosen:
        (RESULTS / f"{name}.json").unlink(missing_ok=True)  # no stale numbers if this run fails
        command = [sys.executable, "-m", f"bench.{name}", *passed]
        print(f"\n===== {name}: {' '.join(command[1:])}", flush=True)
        started = time.perf_counter()
        try:
            code = subprocess.run(command, cwd=ROOT).returncode
        except KeyboardInterrupt:
            print(f"\n{name} interrupted", flush=True)
            code = 130
        outcomes[name] = (code, time.perf_counter() - started)
        print(
            f"===== {name}: {'ok' if code == 0 else f'FAILED (exit {code})'} in {outcomes[name][1]:.0f}s",
            flush=True,
        )
        if code == 130:
            break

    rows = []
    for name, (code, _) in outcomes.items():
        path = RESULTS / f"{name}.json"
        if code != 0 or not path.is_file():
            rows.append([name, f"FAILED (exit {code}), see its output above", "", "", "FAILED"])
            continue
        found = json.loads(path.read_text())
        mode = "quick" if found.get("quick") else "full"
        for row in found["rows"]:
            rows.append(
                [
                    f"{name} ({mode})",
                    row["measure"],
                    fmt(row["value"]),
                    row["target"],
                    verdict(row["ok"]),
                ]
            )
    table = markdown_table(["benchmark", "measure", "value", "target", "verdict"], rows)
    times = ", ".join(f"{name} {seconds:.0f}s" for name, (_, seconds) in outcomes.items())
    summary = (
        f"# Benchmarks\n\n- run: {time.strftime('%Y-%m-%d %H:%M:%S')}, flags: "
        f"{' '.join(passed) or '(none)'}\n- time: {times}\n- details: bench/results/<name>.md\n\n"
        f"{table}\n"
    )
    (RESULTS / "summary.md").write_text(summary)
    print("\n" + summary, flush=True)
    failed = [name for name, (code, _) in outcomes.items() if code != 0]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
