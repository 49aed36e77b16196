"""The recorder around the stages: it opens each stage's MLflow run, and the stage's `record()`
writes what the stage produced through the open run's `StageRecord`. With `tracking.enabled=false`
the `NullRecorder` stands in and every call does nothing, so no stage branches on tracking."""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from pipeline.errors import UpstreamMissing
from pipeline.tracking import integrity, store
from pipeline.tracking.buffer import MetricBuffer
from pipeline.tracking.provenance import mask, process_tags

log = logging.getLogger(__name__)


def log_values(
    run_id: str,
    params: dict[str, Any] | None = None,
    metrics: dict[str, float] | None = None,
    tags: dict[str, Any] | None = None,
    client: MlflowClient | None = None,
) -> None:
    """Params, metrics and tags of one run in as few requests as MLflow allows."""
    client = client or MlflowClient()
    now = int(time.time() * 1000)
    param_list = [Param(k, mask(str(v))[:6000]) for k, v in (params or {}).items()]
    metric_list = [Metric(k, float(v), now, 0) for k, v in (metrics or {}).items() if v is not None]
    tag_list = [RunTag(k, mask(str(v))[:5000]) for k, v in (tags or {}).items()]
    batches = max(-(-len(param_list) // 100), -(-len(tag_list) // 100), -(-len(metric_list) // 1000), 1)
    for i in range(batches):
        client.log_batch(
            run_id,
            metrics=metric_list[i * 1000 : (i + 1) * 1000],
            params=param_list[i * 100 : (i + 1) * 100],
            tags=tag_list[i * 100 : (i + 1) * 100],
        )


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


@dataclass
class FoundRun:
    """A finished stage run found in the store, and the run whose outputs it holds (a reused
    prepare run points at the run that computed them)."""

    run_id: str
    name: str
    started: float  # seconds since the epoch
    tags: dict[str, str]

    @property
    def outputs_run(self) -> str:
        return self.tags.get("reused.run", self.run_id)

    def describe(self) -> str:
        return f"{self.run_id} ({self.name}, {time.strftime('%Y-%m-%d %H:%M', time.localtime(self.started))})"


def _found(run: Any) -> FoundRun:
    return FoundRun(run.info.run_id, run.info.run_name, run.info.start_time / 1000, dict(run.data.tags))


@dataclass
class StageRecord:
    """One open MLflow run: what a stage's `record()` writes to. `tags` keeps what was tagged, so
    a later stage of the same invocation reads them as it would from the store."""

    run_id: str
    experiment_id: str
    tags: dict[str, str] = field(default_factory=dict)
    _buffer: MetricBuffer | None = None

    def log(self, params: dict | None = None, metrics: dict | None = None, tags: dict | None = None) -> None:
        log_values(self.run_id, params=params, metrics=metrics, tags=tags)
        self.tags.update({k: str(v) for k, v in (tags or {}).items()})

    def files(self, files: dict[str, str | bytes], directory: str | None = None) -> None:
        """Small text or binary files (tables, reports, decision records) as artifacts."""
        with tempfile.TemporaryDirectory() as tmp:
            for name, content in files.items():
                path = Path(tmp) / name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(content if isinstance(content, bytes) else content.encode())
            MlflowClient().log_artifacts(self.run_id, tmp, artifact_path=directory)

    def figures(self, figures: dict[str, Any]) -> dict[str, bytes]:
        """Matplotlib figures as PNG artifacts under plots/ (closed afterwards); returns the PNGs,
        so that a page showing them again (the run report) needs not draw them again."""
        if not figures:  # nothing drawn (tracking.plots=false): no empty plots/ folder
            return {}
        import io

        import matplotlib.pyplot as plt

        images = {}
        for name, figure in figures.items():
            buffer = io.BytesIO()
            figure.savefig(buffer, format="png", dpi=100)  # each figure lays itself out
            plt.close(figure)
            images[name] = buffer.getvalue()
        self.files(images, directory="plots")
        return images

    def save_outputs(self, output: Any) -> None:
        """A stage output (anything with `save(dir)`) under the run's `outputs/` artifacts, sealed:
        its manifest's digest is the run's `outputs.sha256` tag."""
        with tempfile.TemporaryDirectory() as tmp:
            output.save(Path(tmp))
            digest = integrity.seal(Path(tmp))
            MlflowClient().log_artifacts(self.run_id, tmp, artifact_path="outputs")
        self.log(tags={integrity.OUTPUTS_TAG: digest})

    def dataset(
        self,
        frame: Any,
        source: str | None,
        target: str,
        name: str,
        digest: str,
        context: str,
        also_in: str | None = None,
    ) -> None:
        """Rows of a split as a dataset input of this run (the UI's Dataset column), with its
        context (training, validation, testing); `also_in`: another run that shows it too."""
        from mlflow.entities import DatasetInput, InputTag

        dataset = mlflow.data.from_pandas(frame, source=source, targets=target, name=name, digest=digest)
        entry = DatasetInput(dataset._to_mlflow_entity(), [InputTag("mlflow.data.context", context)])
        for run_id in filter(None, (self.run_id, also_in)):
            store.log_dataset(MlflowClient(), run_id, entry)

    def model(self, predictor: Any, input_example: Any) -> str:
        """The deployable pyfunc in this run; returns its model URI (also tagged `model.uri`, and
        its logged-model id `model.id`)."""
        from pipeline.serving.packaging import log_model

        uri, model_id = log_model(predictor, input_example)
        listing, digest = integrity.model_listing(uri)
        self.files({integrity.MODEL_MANIFEST: json.dumps(listing, indent=1, sort_keys=True)})
        self.log(tags={"model.uri": uri, "model.id": model_id, integrity.MODEL_TAG: digest})
        return uri

    def model_metrics(self, model_id: str, metrics: dict[str, float], dataset: tuple[str, str]) -> None:
        """Metrics of a logged model on a dataset (name, digest): the Models tab shows them."""
        now = int(time.time() * 1000)
        name, digest = dataset
        entries = [Metric(k, float(v), now, 0, model_id=model_id, dataset_name=name, dataset_digest=digest)
                   for k, v in metrics.items()]  # fmt: skip
        MlflowClient().log_batch(self.run_id, metrics=entries)

    @property
    def epochs(self) -> Callable[[int, dict[str, float]], None]:
        """Where per-epoch metrics go: batched, written from a background thread."""
        if self._buffer is None:
            self._buffer = MetricBuffer(self.run_id)
        return self._buffer.add

    def flush(self) -> None:
        """Every epoch's metrics are in the store (call before the run ends)."""
        if self._buffer is not None:
            self._buffer.flush()

    def trial_runs(self, family: str) -> Any:
        from pipeline.tracking.trials import TrialRuns

        return TrialRuns(mlflow.get_tracking_uri(), self.experiment_id, self.run_id, family)


class NullRecord:
    """The stand-in for a run when nothing is tracked: every call does nothing."""

    run_id = None
    experiment_id = None
    epochs = None

    def __init__(self) -> None:
        self.tags: dict[str, str] = {}

    def log(self, *args: Any, **kwargs: Any) -> None:
        pass

    files = figures = save_outputs = dataset = model_metrics = flush = log

    def model(self, predictor: Any, input_example: Any) -> None:
        return None

    def trial_runs(self, family: str) -> None:
        return None


def _sample_if_none(run_id: str) -> None:
    """One sample of the machine for a run shorter than the sampling interval: MLflow drops a
    partial sample, so such a run would otherwise show no system metrics at all."""
    import psutil

    client = MlflowClient()
    if any(key.startswith("system/") for key in client.get_run(run_id).data.metrics):
        return
    memory = psutil.virtual_memory()
    log_values(
        run_id,
        metrics={
            "system/cpu_utilization_percentage": psutil.cpu_percent(interval=0.05),
            "system/system_memory_usage_megabytes": (memory.total - memory.available) / 2**20,
            "system/system_memory_usage_percentage": memory.percent,
        },
        client=client,
    )


class MlflowRecorder:
    """Stage runs in one MLflow experiment: the invocation's parent run, one nested run per stage,
    and the lookups a stage run alone needs."""

    enabled = True

    def __init__(self, tracking_cfg: Any):
        self.uri = store.tracking_uri(tracking_cfg.uri)
        store.probe(self.uri, tracking_cfg.connect_timeout)
        self.store_dir = store.local_store_dir(self.uri)
        self.experiment_id = store.connect(self.uri, tracking_cfg.experiment)
        self.system_metrics = bool(tracking_cfg.system_metrics)
        if self.system_metrics:
            mlflow.set_system_metrics_sampling_interval(float(tracking_cfg.system_metrics_interval))
            mlflow.set_system_metrics_samples_before_logging(1)
        ui_url = tracking_cfg.ui_url
        self.server = self.uri.startswith(("http://", "https://"))
        self.ui = mask(self.uri) if self.server else ui_url
        self.link = store.runs_table_link(self.ui, self.experiment_id)
        self.link_note = "" if self.server else "(make ui)"

    def reap_orphans(self) -> list[str]:
        return store.reap_orphaned_runs(self.experiment_id)

    @contextmanager
    def pipeline_run(self, name: str, tags: dict[str, str]) -> Iterator[StageRecord]:
        store.reset_fluent_state()
        tags = {**tags, **process_tags()}
        with store.run_scope(name, self.experiment_id, tags) as run:
            yield StageRecord(run.info.run_id, self.experiment_id, dict(tags))

    @contextmanager
    def stage_run(
        self,
        name: str,
        tags: dict[str, str],
        run_id: str | None = None,
        system_metrics: bool = False,
        detached: bool = False,
    ) -> Iterator[StageRecord]:
        """A stage's run under the invocation's run. `detached`: kept off the stack of active
        runs, so that it may stay open while the next stage's run opens (see
        `store.detached_run_scope`); it samples no system metrics."""
        watch = system_metrics and self.system_metrics and not detached
        if detached:
            scope = store.detached_run_scope(name, self.experiment_id, tags)
        else:
            scope = store.run_scope(name, self.experiment_id, tags, True, run_id, watch)
        with scope as run:
            record = StageRecord(run.info.run_id, self.experiment_id, dict(tags))
            # who runs it now (a continued tune run too): reaped KILLED if this process dies
            record.log(tags=process_tags())
            try:
                yield record
            finally:
                record.flush()
                if watch:
                    _sample_if_none(record.run_id)
                if self.server:  # the line MLflow would print, for the log file only
                    log.info(
                        "View run %s at: %s/#/experiments/%s/runs/%s",
                        name,
                        self.ui,
                        self.experiment_id,
                        record.run_id,
                    )

    def find(
        self,
        stage: str,
        filters: dict[str, str],
        from_run: str | None,
        required: bool = True,
        family: str | None = None,
    ) -> FoundRun | None:
        """The run of `stage` that `from_run` names, else the newest finished one matching `filters`."""
        if from_run:
            try:
                return _found(store.resolve_from_run(from_run, stage, family))
            except UpstreamMissing:
                if required:
                    raise
        run = store.find_stage_run(self.experiment_id, stage, filters)
        return _found(run) if run is not None else None

    def get(self, run_id: str) -> FoundRun:
        return _found(MlflowClient().get_run(run_id))

    def load(self, found: FoundRun, kind: type) -> Any:
        """The stage output saved in a run's `outputs/`, checked against its recorded digest, then
        loaded with `kind.load(dir)`."""
        source = found if found.outputs_run == found.run_id else self.get(found.outputs_run)
        with tempfile.TemporaryDirectory() as tmp:
            local = mlflow.artifacts.download_artifacts(
                run_id=found.outputs_run, artifact_path="outputs", dst_path=tmp
            )
            what = f"the outputs of run {found.outputs_run} ({source.name})"
            integrity.check_sealed(Path(local), source.tags.get(integrity.OUTPUTS_TAG), what)
            return kind.load(Path(local))

    def claim(
        self,
        recorded: str | None,
        publish: Callable[[str], None],
        reread: Callable[[], Any],
        shared: bool,
        name: str,
        tags: dict[str, str],
        parent_run_id: str,
    ) -> tuple[str, bool]:
        """The one run that several invocations or workers share (a study's tune run): the one
        recorded, or a new one. Workers that start at once on a new shared study each create one;
        after a pause all keep the one recorded last and the others delete theirs."""
        client = MlflowClient()
        if recorded:
            try:
                client.get_run(recorded)
                return recorded, True
            except mlflow.exceptions.MlflowException:
                pass  # the study outlived its run (another store): start a new one
        mine = client.create_run(
            self.experiment_id, run_name=name, tags={**tags, "mlflow.parentRunId": parent_run_id}
        ).info.run_id
        publish(mine)
        if shared:  # a shared database: other machines may be claiming right now
            time.sleep(2.0)
            winner = reread()
            if winner != mine:
                client.delete_run(mine)
                return winner, True
        return mine, False


class NullRecorder:
    """Nothing is tracked (`tracking.enabled=false`): runs are stand-ins, lookups find nothing."""

    enabled = False
    experiment_id = None
    store_dir = None
    link = None
    link_note = ""

    def reap_orphans(self) -> list[str]:
        return []

    @contextmanager
    def pipeline_run(self, name: str, tags: dict[str, str]) -> Iterator[NullRecord]:
        yield NullRecord()

    @contextmanager
    def stage_run(self, *args: Any, **kwargs: Any) -> Iterator[NullRecord]:
        yield NullRecord()

    def find(self, *args: Any, **kwargs: Any) -> None:
        return None

    def claim(self, *args: Any, **kwargs: Any) -> tuple[None, bool]:
        return None, False


Recorder = MlflowRecorder | NullRecorder


def recorder_for(tracking_cfg: Any) -> Recorder:
    if not tracking_cfg.enabled:
        return NullRecorder()
    return MlflowRecorder(tracking_cfg)
