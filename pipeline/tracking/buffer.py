"""Per-epoch metrics written in batches from a background thread."""

from __future__ import annotations

import queue
import threading
import time

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient


class MetricBuffer:
    """Collects per-epoch metrics and hands them, in batches, to a writer thread that sends them
    with `log_batch`: the training loop never waits on the tracking store, and the store gets a
    request every `flush_seconds` instead of one per metric. `flush()` sends what is left and
    waits until everything is written (call it before the run ends); a failed write is raised
    there."""

    def __init__(
        self, run_id: str, client: MlflowClient | None = None, flush_seconds: float = 5.0, prefix: str = ""
    ):
        self.run_id = run_id
        self.client = client or MlflowClient()
        self.flush_seconds = flush_seconds
        self.prefix = prefix
        self.pending: list[Metric] = []
        self.last_send = time.monotonic()
        self._batches: queue.SimpleQueue[list[Metric] | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._error: BaseException | None = None

    def add(self, step: int, values: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        self.pending += [Metric(f"{self.prefix}{k}", float(v), now, step) for k, v in values.items()]
        if len(self.pending) >= 1000 or time.monotonic() - self.last_send > self.flush_seconds:
            self._send()

    def flush(self) -> None:
        if self._writer is None:  # nothing in flight: write here, no thread needed
            self._batches.put(self.pending)
            self._batches.put(None)
            self.pending = []
            self._write()
        else:
            self._send()
            self._batches.put(None)
            self._writer.join()
            self._writer = None
        self.last_send = time.monotonic()
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _send(self) -> None:
        self.last_send = time.monotonic()
        if not self.pending:
            return
        batch, self.pending = self.pending, []
        if self._writer is None:
            self._writer = threading.Thread(target=self._write, name="metric-writer", daemon=True)
            self._writer.start()
        self._batches.put(batch)

    def _write(self) -> None:
        while (batch := self._batches.get()) is not None:
            if self._error is not None:
                continue  # keep draining so flush() returns; the first error is raised there
            try:
                for start in range(0, len(batch), 1000):
                    self.client.log_batch(self.run_id, metrics=batch[start : start + 1000], synchronous=True)
            except BaseException as exc:  # noqa: BLE001 - handed to the training thread in flush()
                self._error = exc
