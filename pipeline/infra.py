"""Shared infrastructure on one machine: a throwaway PostgreSQL cluster on loopback and an MLflow
tracking server backed by it, with artifact proxying. `make server` / `make server-stop`; the
tests use the same classes.

PostgreSQL refuses to run as root, so as root the cluster runs as the `postgres` user in a folder
that user owns (a temp dir, not under a checkout in /root)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.ports import free_port

__all__ = ["PostgresCluster", "TrackingServer", "free_port", "postgres_available"]

STATE_FILE = Path(".server") / "state.json"
PG_BIN_DIRS = ("/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/17/bin")


def _pg_tool(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for directory in PG_BIN_DIRS:
        candidate = Path(directory) / name
        if candidate.exists():
            return str(candidate)
    raise PipelineError(f"PostgreSQL's {name} is not installed; install the postgresql package")


def postgres_available() -> bool:
    try:
        _pg_tool("initdb")
        _pg_tool("pg_ctl")
    except PipelineError:
        return False
    return True


def _as_cluster_user(command: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *command]
    return command


@dataclass
class PostgresCluster:
    """A PostgreSQL cluster in its own folder, listening on 127.0.0.1 only."""

    directory: str = ""
    port: int = 0
    database: str = "pipeline"
    user: str = "postgres"

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{self.database}"

    def start(self, databases: tuple[str, ...] = ("pipeline", "optuna")) -> PostgresCluster:
        self.directory = self.directory or tempfile.mkdtemp(prefix="pipeline-pg-")
        self.port = self.port or free_port()
        self.user = "postgres" if os.geteuid() == 0 else os.environ.get("USER", "postgres")
        data = Path(self.directory) / "data"
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres", "postgres")
            os.chmod(self.directory, 0o700)
        self._run(
            [_pg_tool("initdb"), "-D", str(data), "-A", "trust", "-U", self.user, "--no-sync", "-E", "UTF8"]
        )
        options = f"-k {self.directory} -c listen_addresses=127.0.0.1 -p {self.port} -c fsync=off -c max_connections=200"
        self._run(
            [
                _pg_tool("pg_ctl"),
                "-D",
                str(data),
                "-o",
                options,
                "-l",
                str(Path(self.directory) / "postgres.log"),
                "-w",
                "-t",
                "60",
                "start",
            ]
        )
        for name in databases:
            self._run(
                [
                    _pg_tool("createdb") if shutil.which("createdb") else "createdb",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                    "-U",
                    self.user,
                    name,
                ]
            )
        return self

    def stop(self) -> None:
        if not self.directory:
            return
        data = Path(self.directory) / "data"
        if data.exists():
            subprocess.run(
                _as_cluster_user([_pg_tool("pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]),
                capture_output=True,
                text=True,
            )
        shutil.rmtree(self.directory, ignore_errors=True)

    def database_url(self, name: str) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{name}"

    def _run(self, command: list[str]) -> None:
        result = subprocess.run(_as_cluster_user(command), capture_output=True, text=True, cwd=self.directory)
        if result.returncode != 0:
            detail = (result.stderr or result.stdout).strip().splitlines()
            raise PipelineError(
                f"{Path(command[0]).name} failed: {detail[-1] if detail else result.returncode}"
            )


@dataclass
class TrackingServer:
    """`mlflow server` on a PostgreSQL backend store, proxying artifacts to a local folder."""

    backend_uri: str
    artifacts: str
    port: int = 5050
    pid: int = 0
    log: str = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120.0) -> TrackingServer:
        mlflow_cli = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
        self.log = self.log or str(Path(self.artifacts).parent / "mlflow-server.log")
        Path(self.artifacts).mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        with open(self.log, "ab") as log:
            process = subprocess.Popen(
                [
                    mlflow_cli,
                    "server",
                    "--backend-store-uri",
                    self.backend_uri,
                    "--serve-artifacts",
                    "--artifacts-destination",
                    self.artifacts,
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--workers",
                    "2",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        self.pid = process.pid
        deadline = time.time() + timeout
        while time.time() < deadline:
            if process.poll() is not None:
                raise PipelineError(f"mlflow server exited with {process.returncode}; see {self.log}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise PipelineError(
            f"mlflow server did not answer on {self.url} within {timeout:.0f}s; see {self.log}"
        )

    def stop(self) -> None:
        if self.pid:
            try:
                os.killpg(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            for _ in range(50):
                try:
                    os.kill(self.pid, 0)
                    time.sleep(0.1)
                except ProcessLookupError:
                    break
            else:
                try:
                    os.killpg(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.pid = 0


def start(port: int) -> None:
    if STATE_FILE.exists():
        state = json.loads(STATE_FILE.read_text())
        print(
            f"already running: {state['server']['url'] if 'url' in state['server'] else state['tracking_uri']}"
            " (make server-stop first)"
        )
        return
    from pipeline.ports import check_free

    check_free("127.0.0.1", port, "make server SERVER_PORT=<port>")
    cluster = PostgresCluster().start()
    try:
        server = TrackingServer(
            cluster.database_url("pipeline"), str(Path(cluster.directory) / "artifacts"), port
        ).start()
    except Exception:
        cluster.stop()
        raise
    STATE_FILE.parent.mkdir(exist_ok=True)
    STATE_FILE.write_text(
        json.dumps(
            {"cluster": asdict(cluster), "server": asdict(server), "tracking_uri": server.url}, indent=2
        )
    )
    print(
        f"MLflow tracking server: {server.url}  (PostgreSQL on 127.0.0.1:{cluster.port}, data in {cluster.directory})"
    )
    print(
        f'  pipeline:  make pipeline ARGS="tracking.uri={server.url} tune.storage={cluster.database_url("optuna")}"'
    )
    print(f"  UI:        {server.url}/#/experiments?workflowType=machine_learning")
    print("  stop:      make server-stop")


def stop() -> None:
    if not STATE_FILE.exists():
        print("no server is running (nothing in .server/)")
        return
    state = json.loads(STATE_FILE.read_text())
    TrackingServer(**state["server"]).stop()
    PostgresCluster(**state["cluster"]).stop()
    STATE_FILE.unlink()
    print("stopped the tracking server and its PostgreSQL cluster")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument("--port", type=int, default=5050)
    args = parser.parse_args()
    try:
        start(args.port) if args.action == "start" else stop()
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
