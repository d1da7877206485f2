"""The shared set-up's servers for tests and benchmarks, on 127.0.0.1 only, each in a
temporary folder and stopped whatever happens: a PostgreSQL 15 cluster with password
authentication (scram-sha-256, no ``trust``) and ``mlflow server`` on it with served
artifacts and MLflow's basic-auth app. The commands are the recipe in docs/many-machines.md."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List

__all__ = ["Postgres", "postgres_cluster", "MlflowServer", "mlflow_server", "free_port",
           "pg_bindir"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_bindir() -> Path:
    out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True)
    return Path(out.stdout.strip())


@dataclass
class Postgres:
    folder: Path
    port: int
    user: str
    password: str
    _as: List[str]

    def url(self, database: str, driver: str = "postgresql+psycopg") -> str:
        """A URL without the password (it goes in ``PGPASSWORD``, see sweep.secrets)."""
        return f"{driver}://{self.user}@127.0.0.1:{self.port}/{database}"

    @property
    def env(self) -> Dict[str, str]:
        return {"PGPASSWORD": self.password}

    def ctl(self, *args: str) -> None:
        subprocess.run([*self._as, str(pg_bindir() / "pg_ctl"), "-D", str(self.folder / "data"),
                        "-l", str(self.folder / "postgres.log"), "-w", *args],
                       check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        self.ctl("-o", f"-c listen_addresses=127.0.0.1 -c port={self.port} "
                       f"-c unix_socket_directories={self.folder} -c max_connections=300",
                 "start")

    def stop(self, mode: str = "fast") -> None:
        self.ctl("-m", mode, "stop")


@contextmanager
def postgres_cluster(tmp: Path, databases=("optuna", "mlflow", "mlflow_auth")) -> Iterator[Postgres]:
    """``initdb`` as the ``postgres`` user when run as root (initdb refuses root), a
    superuser ``sweep`` whose random password is given only through a file and the
    environment, the databases, and the cluster stopped at the end."""
    # its own folder in the system's temporary folder: one under pytest's (mode 0700,
    # root's) cannot be reached by the postgres user
    folder = Path(tempfile.mkdtemp(prefix="sweep-pg-"))
    run_as: List[str] = []
    if os.geteuid() == 0:
        run_as = ["runuser", "-u", "postgres", "--"]
        shutil.chown(folder, "postgres")
    password = secrets.token_urlsafe(18)
    pwfile = folder / "pwfile"
    pwfile.write_text(password + "\n")
    if run_as:
        shutil.chown(pwfile, "postgres")
    pwfile.chmod(0o600)
    subprocess.run([*run_as, str(pg_bindir() / "initdb"), "-D", str(folder / "data"), "-U", "sweep",
                    "--auth=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8", "--no-sync"],
                   check=True, capture_output=True, timeout=120)
    pwfile.unlink()
    (Path(tmp) / "pg-folder").write_text(str(folder))  # where it was, for a post-mortem
    pg = Postgres(folder, free_port(), "sweep", password, run_as)
    pg.start()
    try:
        env = {**os.environ, **pg.env}
        for name in databases:
            subprocess.run([str(pg_bindir() / "createdb"), "-h", "127.0.0.1", "-p", str(pg.port),
                            "-U", "sweep", name], check=True, env=env, capture_output=True)
        yield pg
    finally:
        try:
            pg.stop("immediate")
        except Exception:  # noqa: BLE001  (already stopped)
            pass
        shutil.rmtree(folder, ignore_errors=True)


@dataclass
class MlflowServer:
    url: str
    admin: str
    password: str
    process: subprocess.Popen
    log: Path

    @property
    def env(self) -> Dict[str, str]:
        """A client's credentials (MLflow's client reads them)."""
        return {"MLFLOW_TRACKING_USERNAME": self.admin, "MLFLOW_TRACKING_PASSWORD": self.password}


def _wait_http(url: str, process: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mlflow server exited {process.returncode}: "
                               f"{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"mlflow server did not answer in {timeout:.0f} s: {log.read_text()[-3000:]}")


@contextmanager
def mlflow_server(tmp: Path, pg: Postgres, database: str = "mlflow", auth_database: str = "mlflow_auth") -> Iterator[MlflowServer]:
    """``mlflow server --app-name basic-auth`` on 127.0.0.1: runs, params and metrics in
    PostgreSQL, artifacts served over HTTP from a folder (clients never see the path),
    the users of the auth app in PostgreSQL too; the admin password from the environment."""
    folder = Path(tmp) / "mlflow-server"
    folder.mkdir(parents=True)
    port, password = free_port(), secrets.token_urlsafe(18)
    ini = folder / "basic_auth.ini"
    ini.write_text("[mlflow]\ndefault_permission = READ\n"
                   f"database_uri = {pg.url(auth_database)}\nadmin_username = admin\n"
                   "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
                   # a password is hashed (PBKDF2) once a minute per worker, not per request:
                   # 0.9 CPU-s a request without it (bench/load.py found it)
                   "auth_cache_ttl_seconds = 60\n")
    env = {**os.environ, **pg.env, "MLFLOW_AUTH_CONFIG_PATH": str(ini),
           "MLFLOW_AUTH_ADMIN_PASSWORD": password,
           "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_urlsafe(24)}  # CSRF, basic-auth
    log = folder / "server.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth",
             "--host", "127.0.0.1", "--port", str(port), "--workers", "2",
             "--backend-store-uri", pg.url(database), "--serve-artifacts",
             "--artifacts-destination", str(folder / "artifacts")],
            env=env, stdout=out, stderr=subprocess.STDOUT, cwd=folder,
            start_new_session=True)
    server = MlflowServer(f"http://127.0.0.1:{port}", "admin", password, process, log)
    try:
        _wait_http(server.url, process, log)
        yield server
    finally:
        import signal

        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
