"""`make dockerfile`: a build folder for the champion (MLflow's generate-dockerfile), whose pinned
requirements resolve on public indexes (torch's CPU build from PyTorch's index)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from omegaconf import DictConfig

from pipeline.serving.target import ServingError, resolve_target


def dockerfile(cfg: DictConfig, output: Path, model_uri: str | None) -> Path:
    """The build folder: the model checked against its recorded digests, then handed to MLflow's
    generate-dockerfile."""
    from pipeline.serving.cli import child_env
    from pipeline.tracking import integrity, registry

    target = resolve_target(cfg, model_uri)
    if output.exists():
        shutil.rmtree(output)
    cli = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    with tempfile.TemporaryDirectory() as tmp:
        run_id, expected = registry.record_of(target.model_uri)
        local = integrity.checked_model(target.model_uri, run_id, expected, Path(tmp))
        command = [
            cli,
            "models",
            "generate-dockerfile",
            "-m",
            str(local),
            "-d",
            str(output),
            "--env-manager",
            "local",
        ]
        done = subprocess.run(command, capture_output=True, text=True, env=child_env(target.tracking_uri))
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise ServingError(f"generate-dockerfile failed: {detail[-1] if detail else done.returncode}")
    print(
        f"dockerfile: {output}/ holds the Dockerfile and {target.description}; where Docker runs:\n"
        f"  docker build -t pipeline-model {output}\n"
        "  docker run --rm -p 8080:8080 pipeline-model   # POST http://127.0.0.1:8080/invocations",
        flush=True,
    )
    return output
