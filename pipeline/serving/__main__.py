"""`python -m pipeline.serving serve|predict`: see `cli.py`."""

from pipeline.serving.cli import main

main()
