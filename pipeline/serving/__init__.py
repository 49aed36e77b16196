"""The registered model and its use: `predictor.py` (preprocessing + any family's model, raw rows
in, predictions out), `packaging.py` (the MLflow pyfunc), `bundle.py` (the code it carries),
`app.py` (the HTTP app with its request limits), `batch.py` (files of rows), `image.py` (the
Docker image's folder), `cli.py` (`make serve`, `make predict`, `make dockerfile`)."""
