"""Benchmarks of the pipeline: `make bench` (all) or `python -m bench.<name> [--quick]` (one).

Every benchmark measures the variants it compares side by side in one process run: a warm-up,
then repeats that alternate between the variants, with the same thread count, reporting the
median of the repeats. Results land in bench/results/<name>.md (and .json for bench.run_all).
"""
