"""The training engine: `loop.py` (the epoch loop, read top to bottom), `callbacks.py` (early
stopping, progress, per-epoch reports), `schedules.py` (learning rate), `setup.py` (seed, device,
threads, loss), `data.py` (what every family trains on), `tensors.py` (arrays in, predictions out) and `result.py` (the trained network).
Nothing is imported here, so reading a config never pays for torch."""
