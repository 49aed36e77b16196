"""`python -m pipeline.serving serve|predict|dockerfile`: see `cli.py`."""

from pipeline.serving.cli import main
from pipeline.shutdown import run_then_exit

run_then_exit(main)  # without the seconds of module teardown at exit
