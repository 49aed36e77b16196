"""`python -m pipeline.serving serve|predict|dockerfile`: see `cli.py`."""

from pipeline.serving.cli import command

command()
