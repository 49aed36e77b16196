"""Stored files are data, checked before use: every stage output and every file of a logged model
has its SHA-256 in a manifest saved beside them, and the manifest's own SHA-256 is a tag of the
run (and of the registered version) in the tracking database. Before anything is loaded, the files
are checked against the manifest and the manifest against the tag; a mismatch is refused with one
line naming the file. Someone who can write to the artifact store can change files and manifest,
not the tag."""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from pipeline.digests import file_digest
from pipeline.errors import PipelineError

MANIFEST = "MANIFEST.sha256.json"
MODEL_MANIFEST = "model_manifest.sha256.json"  # the logged model's, among its run's artifacts
OUTPUTS_TAG, MODEL_TAG = "outputs.sha256", "model.sha256"


class Tampered(PipelineError):
    """Stored files that differ from what was recorded when they were written."""


# the registry adds this to a registered version's files: its name and version, nothing that runs
REGISTRY_FILES = ("registered_model_meta",)


def manifest(directory: Path) -> dict[str, str]:
    """Each file below `directory` (but a manifest) and its SHA-256, by relative path."""
    return {
        str(path.relative_to(directory)): file_digest(path)
        for path in sorted(directory.rglob("*"))
        if path.is_file() and path.name != MANIFEST and str(path.relative_to(directory)) not in REGISTRY_FILES
    }


def digest_of(listing: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(listing, sort_keys=True).encode()).hexdigest()


def seal(directory: Path) -> str:
    """Write the manifest of `directory` into it; returns the manifest's digest (for a tag)."""
    listing = manifest(directory)
    (directory / MANIFEST).write_text(json.dumps(listing, indent=1, sort_keys=True))
    return digest_of(listing)


def check(directory: Path, listing: dict[str, str], expected: str | None, what: str) -> None:
    """Refuse files that differ from `listing`, or a listing whose digest is not `expected`."""
    if not expected:
        raise Tampered(
            f"{what} has no recorded digest (written by an older version, or the tag was removed); "
            "run the stage that writes it again"
        )
    if digest_of(listing) != expected:
        raise Tampered(
            f"{what}: its manifest differs from the digest recorded when it was written; not loading it"
        )
    found = manifest(directory)
    for name in sorted(set(listing) | set(found)):
        if listing.get(name) != found.get(name):
            change = (
                "is missing" if name not in found else "was added" if name not in listing else "was changed"
            )
            raise Tampered(f"{what}: file {name} {change} since it was written; not loading it")


def check_sealed(directory: Path, expected: str | None, what: str) -> None:
    path = directory / MANIFEST
    listing = json.loads(path.read_text()) if path.is_file() else {}
    check(directory, listing, expected, what)


def model_listing(model_uri: str) -> tuple[dict[str, str], str]:
    """The manifest of a just-logged model's files, and its digest: read where a local store keeps
    them (a copy would only be hashed and thrown away), downloaded from any other store."""
    stored = _local_folder(model_uri)
    if stored is not None:
        listing = manifest(stored)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            listing = manifest(
                Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp))
            )
    return listing, digest_of(listing)


def _local_folder(model_uri: str) -> Path | None:
    """The folder of a logged model's files when the store keeps them on this machine."""
    from urllib.parse import urlparse

    from mlflow.store.artifact.models_artifact_repo import ModelsArtifactRepository
    from mlflow.utils.file_utils import local_file_uri_to_path

    location = ModelsArtifactRepository.get_underlying_uri(model_uri)
    if urlparse(location).scheme not in ("", "file"):
        return None
    folder = Path(local_file_uri_to_path(location))
    return folder if folder.is_dir() else None


def checked_model(model_uri: str, run_id: str | None, expected: str | None, into: Path) -> Path:
    """Download a logged model into `into` and check it against the manifest its train run holds
    and the digest recorded for it; returns the local model folder, ready to load."""
    what = f"model {model_uri}"
    if not run_id or not expected:
        check(into, {}, None, what)  # raises: nothing was recorded to check against
    assert run_id is not None
    try:
        recorded = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=MODEL_MANIFEST, dst_path=str(into)
        )
    except Exception:  # noqa: BLE001 - the manifest is gone
        raise Tampered(
            f"{what}: its manifest {MODEL_MANIFEST} is missing from run {run_id}; not loading it"
        ) from None
    listing = json.loads(Path(recorded).read_text())
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(into / "model")))
    check(local, listing, expected, what)
    return local


def version_record(name: str, version: str) -> tuple[str | None, str | None]:
    """(the run that logged the model, model digest) recorded on a registered version."""
    tags: dict[str, Any] = MlflowClient().get_model_version(name, version).tags
    return tags.get("model.run_id", tags.get("train.run_id")), tags.get(
        MODEL_TAG
    )  # train.run_id: older versions
