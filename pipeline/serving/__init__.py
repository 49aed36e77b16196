"""The registered model and its use: `predictor.py` (preprocessing + network, raw rows in,
predictions out), `packaging.py` (the MLflow pyfunc), `cli.py` (`make serve`, `make predict`)."""
