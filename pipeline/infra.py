"""Shared infrastructure on one machine: a throwaway PostgreSQL cluster on loopback and an MLflow
tracking server backed by it, with artifact proxying, both letting in only their owner.
`make server` / `make server-stop`; the tests use the same classes.

PostgreSQL asks every connection for a password (scram-sha-256, over TCP and its socket alike);
the MLflow server runs its basic-auth app and refuses unauthenticated requests. The passwords are
generated, never printed, and kept in files of mode 0600: a libpq password file, and an
environment file for the pipeline (`tracking=server` reads it through `tracking.credentials`).

PostgreSQL refuses to run as root, so as root the cluster runs as the `postgres` user in a folder
that user owns (a temp dir, not under a checkout in /root)."""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.ports import free_port
from pipeline.tracking.provenance import process_alive

__all__ = ["PostgresCluster", "TrackingServer", "free_port", "postgres_available", "write_private"]

STATE_DIR = Path(".server")
STATE_FILE = STATE_DIR / "state.json"
CREDENTIALS_FILE = STATE_DIR / "credentials.env"
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


def write_private(path: Path, text: str, owner: str | None = None) -> Path:
    """A file only its owner can read (mode 0600 from the start, not chmod-ed afterwards)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
    if owner:
        shutil.chown(path, owner, owner)
    return path


@dataclass
class PostgresCluster:
    """A PostgreSQL cluster in its own folder, listening on 127.0.0.1 only, with a password."""

    directory: str = ""
    port: int = 0
    database: str = "pipeline"
    user: str = "postgres"
    passfile: str = ""  # libpq's password file for this cluster (PGPASSFILE)

    def start(self, databases: tuple[str, ...] = ("pipeline", "optuna")) -> PostgresCluster:
        self.directory = self.directory or tempfile.mkdtemp(prefix="pipeline-pg-")
        self.port = self.port or free_port()
        self.user = "postgres" if os.geteuid() == 0 else os.environ.get("USER", "postgres")
        data, password = Path(self.directory) / "data", secrets.token_urlsafe(24)
        owner = "postgres" if os.geteuid() == 0 else None
        if owner:
            shutil.chown(self.directory, owner, owner)
        os.chmod(self.directory, 0o700)
        pwfile = write_private(Path(self.directory) / "initdb.pw", password + "\n", owner)
        self._run([
            _pg_tool("initdb"), "-D", str(data), "-A", "scram-sha-256", f"--pwfile={pwfile}",
            "-U", self.user, "--no-sync", "-E", "UTF8",
        ])  # fmt: skip
        pwfile.unlink()
        self.passfile = str(self._passfile(password))
        options = f"-k {self.directory} -c listen_addresses=127.0.0.1 -p {self.port} -c fsync=off -c max_connections=200"
        log = str(Path(self.directory) / "postgres.log")
        self._run([_pg_tool("pg_ctl"), "-D", str(data), "-o", options, "-l", log, "-w", "-t", "60", "start"])
        for name in databases:
            self.create_database(name)
        return self

    def create_database(self, name: str) -> str:
        """A new, empty database in the running cluster; its URL."""
        self._run([_pg_tool("createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, name])
        return self.database_url(name)

    def _passfile(self, password: str) -> Path:
        """libpq's password file for clients of this cluster, owned by whoever started it."""
        folder = Path(tempfile.mkdtemp(prefix="pipeline-pgpass-"))
        # any host: 127.0.0.1 over TCP, and the socket (which libpq matches as "localhost")
        return write_private(folder / "pgpass", f"*:{self.port}:*:{self.user}:{password}\n")

    @property
    def client_env(self) -> dict[str, str]:
        """What a client needs to connect: the password file, never the password."""
        return {"PGPASSFILE": self.passfile}

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
        if self.passfile:
            shutil.rmtree(Path(self.passfile).parent, ignore_errors=True)

    def database_url(self, name: str) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{name}"

    def _run(self, command: list[str]) -> None:
        env = {**os.environ, **(self.client_env if self.passfile else {})}
        if self.passfile and os.geteuid() == 0:
            command = ["env", f"PGPASSFILE={self._cluster_user_passfile()}", *command]
        result = subprocess.run(
            _as_cluster_user(command), capture_output=True, text=True, cwd=self.directory, env=env
        )
        if result.returncode != 0:
            detail = (result.stderr or result.stdout).strip().splitlines()
            raise PipelineError(
                f"{Path(command[0]).name} failed: {detail[-1] if detail else result.returncode}"
            )

    def _cluster_user_passfile(self) -> str:
        """A copy of the password file the `postgres` user can read (as root, tools run as it)."""
        copy = Path(self.directory) / "pgpass"
        if not copy.exists():
            write_private(copy, Path(self.passfile).read_text(), "postgres")
        return str(copy)


@dataclass
class TrackingServer:
    """`mlflow server` with its basic-auth app on a PostgreSQL backend store, proxying artifacts to
    a local folder; only its admin (the owner) gets in."""

    backend_uri: str
    artifacts: str
    port: int = 5050
    pid: int = 0
    log: str = ""
    username: str = "admin"
    password: str = ""
    passfile: str = ""  # the backend database's password file

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def client_env(self) -> dict[str, str]:
        return {"MLFLOW_TRACKING_USERNAME": self.username, "MLFLOW_TRACKING_PASSWORD": self.password}

    def _auth_config(self, folder: Path) -> Path:
        text = (
            "[mlflow]\ndefault_permission = NO_PERMISSIONS\n"
            f"database_uri = sqlite:///{folder / 'basic_auth.db'}\nadmin_username = {self.username}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        )
        return write_private(folder / "basic_auth.ini", text)

    def _admin(self, database: Path) -> None:
        """The admin user, written before the server starts, with a one-round PBKDF2 hash: the
        server checks the password on every request, and its default hash (scrypt, ~75 ms a
        check) adds seconds to every pipeline run. Key stretching protects guessable passwords;
        this one is 192 random bits, which no guessing reaches either way."""
        import sqlite3

        from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore
        from werkzeug.security import generate_password_hash

        store = SqlAlchemyStore()
        store.init_db(f"sqlite:///{database}")
        if not store.has_user(self.username):
            store.create_user(self.username, self.password, is_admin=True)
        elif not store.authenticate_user(self.username, self.password):
            return  # another password is set there: leave it to the server's own rules
        with sqlite3.connect(database) as connection:
            connection.execute(
                "UPDATE users SET password_hash = ? WHERE username = ?",
                (generate_password_hash(self.password, method="pbkdf2:sha256:1"), self.username),
            )
        os.chmod(database, 0o600)

    def start(self, timeout: float = 120.0) -> TrackingServer:
        mlflow_cli = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
        folder = Path(self.artifacts).parent
        self.log = self.log or str(folder / "mlflow-server.log")
        self.password = self.password or secrets.token_urlsafe(24)
        Path(self.artifacts).mkdir(parents=True, exist_ok=True)
        self._admin(folder / "basic_auth.db")
        env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "MLFLOW_AUTH_CONFIG_PATH": str(self._auth_config(folder)),
            "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_urlsafe(32),
            "MLFLOW_AUTH_ADMIN_PASSWORD": self.password,  # read on the first start only
            "PYTHONWARNINGS": "ignore",
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # GenAI job runners: processes it never uses
            **({"PGPASSFILE": self.passfile} if self.passfile else {}),
        }
        command = [
            mlflow_cli, "server", "--app-name", "basic-auth", "--backend-store-uri", self.backend_uri,
            "--serve-artifacts", "--artifacts-destination", self.artifacts,
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", "2",
        ]  # fmt: skip
        with open(self.log, "ab") as log:
            process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        self.pid = process.pid
        self._wait(process, timeout)
        return self

    def _wait(self, process: subprocess.Popen, timeout: float) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if process.poll() is not None:
                raise PipelineError(f"mlflow server exited with {process.returncode}; see {self.log}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2):
                    return
            except urllib.error.HTTPError:
                return  # it answers (and asks for credentials)
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise PipelineError(
            f"mlflow server did not answer on {self.url} within {timeout:.0f}s; see {self.log}"
        )

    def stop(self) -> None:
        if not self.pid:
            return
        try:
            os.killpg(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        for _ in range(50):
            if _ended(self.pid):
                break
            time.sleep(0.1)
        else:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.pid = 0


def _ended(pid: int) -> bool:
    """Whether `pid` has exited. A child of this process is reaped here: until then it is a
    zombie, which still answers `kill(pid, 0)`."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return True
    except ChildProcessError:
        pass  # not a child of this process (`make server-stop` runs in another one)
    return not process_alive(pid)


def credentials_text(cluster: PostgresCluster, server: TrackingServer) -> str:
    """The environment a client of this server needs (an env file: KEY=value lines)."""
    values = {
        **server.client_env,
        **cluster.client_env,
        "OPTUNA_STORAGE": cluster.database_url("optuna"),
    }
    return "".join(f"{k}={v}\n" for k, v in values.items())


def start(port: int) -> None:
    if STATE_FILE.exists():
        state = json.loads(STATE_FILE.read_text())
        print(f"already running: {state['tracking_uri']} (make server-stop first)")
        return
    from pipeline.ports import check_free

    check_free("127.0.0.1", port, "make server SERVER_PORT=<port>")
    cluster = PostgresCluster().start()
    try:
        server = TrackingServer(
            cluster.database_url("pipeline"), str(Path(cluster.directory) / "artifacts"), port,
            passfile=cluster.passfile,
        ).start()  # fmt: skip
    except Exception:
        cluster.stop()
        raise
    credentials = write_private(CREDENTIALS_FILE, credentials_text(cluster, server)).resolve()
    state = {
        "cluster": asdict(cluster),
        "server": {**asdict(server), "password": ""},
        "tracking_uri": server.url,
    }
    write_private(STATE_FILE, json.dumps(state, indent=2))
    print(
        f"MLflow tracking server: {server.url}  (PostgreSQL on 127.0.0.1:{cluster.port}, data in {cluster.directory})"
    )
    print(f"  credentials: {credentials} (mode 0600; the passwords are not printed)")
    print(f'  pipeline:    make pipeline ARGS="tracking=server tracking.credentials={credentials}"')
    print(
        f"  UI:          {server.url}/#/experiments?workflowType=machine_learning (user admin, password in that file)"
    )
    print("  stop:        make server-stop")


def stop() -> None:
    if not STATE_FILE.exists():
        print("no server is running (nothing in .server/)")
        return
    state = json.loads(STATE_FILE.read_text())
    TrackingServer(**state["server"]).stop()
    PostgresCluster(**state["cluster"]).stop()
    STATE_FILE.unlink()
    CREDENTIALS_FILE.unlink(missing_ok=True)
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
