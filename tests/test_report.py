"""The run report: every section of report.html is present and holds the run's own figures, and
nothing in it loads from elsewhere (it reads offline and prints)."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from pipeline.runner import run_pipeline

SECTIONS = [
    "Data",
    "The search, per family",
    "The final model",
    "Evaluation",
    "The gate",
    "How to use the model",
    "Reproducibility",
]


class _Page(HTMLParser):
    """Section titles with their text, and every address the page would load."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: dict[str, str] = {}
        self.loads: list[str] = []
        self.images = 0
        self._title: str | None = None
        self._in_h2 = False

    def handle_starttag(self, tag: str, attrs: list) -> None:
        values = dict(attrs)
        for key in ("src", "href"):
            if values.get(key):
                self.loads.append(values[key])
        self.images += tag == "img"
        self._in_h2 = tag == "h2"

    def handle_data(self, data: str) -> None:
        if self._in_h2:
            self._title = data.strip()
            self.sections[self._title] = ""
        elif self._title is not None:
            self.sections[self._title] += data

    def handle_endtag(self, tag: str) -> None:
        self._in_h2 = False


@pytest.fixture(scope="module")
def reported(tmp_path_factory, migrated_db):
    import shutil

    from conftest import CONF, TINY
    from hydra import compose, initialize_config_dir

    folder = tmp_path_factory.mktemp("report")
    shutil.copy(migrated_db, folder / "mlflow.db")
    store = f"sqlite:///{folder / 'mlflow.db'}"
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            config_name="config",
            overrides=[*TINY, f"tracking.uri={store}", "candidates=[network,linear]", "tracking.plots=true"],
        )
    result = run_pipeline(cfg)
    mlflow.set_tracking_uri(store)
    text = Path(
        mlflow.artifacts.download_artifacts(run_id=result.parent_run_id, artifact_path="report.html")
    ).read_text()
    page = _Page()
    page.feed(text)
    yield result, text, page, store
    while mlflow.active_run() is not None:
        mlflow.end_run()


def test_every_section_is_there_in_order_and_holds_text(reported):
    _, _, page, _ = reported
    assert [s for s in page.sections if s in SECTIONS] == SECTIONS
    for title in SECTIONS:
        assert len(page.sections[title].strip()) > 20, title
    assert page.images >= 4  # best-so-far curves, the learning curve, the evaluation plots


def test_the_report_quotes_the_runs_own_figures(reported):
    result, text, page, _ = reported
    decision, evaluation = result.outputs["register"], result.outputs["evaluate"]
    assert f"Registered <b>{decision.model_name} v{decision.version}</b>" in text
    assert f"{evaluation.metrics[result.objective.metric]:.4g}" in page.sections["Evaluation"]
    assert evaluation.verdict in page.sections["Evaluation"]
    assert decision.reason in page.sections["The gate"]
    assert "curl -s http://127.0.0.1:5001/invocations" in page.sections["How to use the model"]
    assert f"make reproduce RUN={result.parent_run_id}" in page.sections["Reproducibility"]
    card = result.outputs["prepare"].card
    assert f"{card['rows_used']} used" in page.sections["Data"]
    for family, tuned in result.outputs["tune"].items():
        assert f"{sum(tuned.counts.values())} trials" in page.sections["The search, per family"], family


def test_nothing_is_loaded_from_elsewhere(reported):
    _, text, page, _ = reported
    assert all(address.startswith("data:image/png;base64,") for address in page.loads), page.loads
    assert not re.search(r"@import|url\(|<script|<link", text)


def test_make_report_prints_the_path_of_the_newest_report(reported, tmp_path, monkeypatch, capsys):
    from pipeline import report

    result, text, _, store = reported
    monkeypatch.chdir(tmp_path)
    report.main([f"tracking.uri={store}"])
    printed = Path(capsys.readouterr().out.strip())
    assert printed.is_file() and printed.read_text() == text and result.parent_run_id in str(printed)
    assert MlflowClient(tracking_uri=store).get_run(result.parent_run_id).info.status == "FINISHED"
