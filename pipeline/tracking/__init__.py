"""Tracking in MLflow, kept apart from the stages: `recorder.py` opens each stage's run and writes
what `record()` hands it; `store.py` connects and finds runs; `buffer.py` batches per-epoch
metrics; `trials.py` and `registry.py` are the adapters for tuning trials and the model registry;
`provenance.py` (no MLflow) says where a run came from and masks secrets."""
