"""A throwaway PostgreSQL server for tests and benchmarks: Debian's binaries, a temporary folder.

    server = PostgresServer.start()          # initdb + pg_ctl start on 127.0.0.1, a free port
    url = server.create_database("runs_a")   # postgresql+psycopg://postgres@127.0.0.1:PORT/runs_a
    server.drop_database("runs_a")
    server.stop()                            # the server and its folder gone

PostgreSQL refuses to run as root: under root the cluster is made and run as `nobody` (its folder
handed over to it). Tuned for throwaway data: no fsync, no synchronous commit. `missing()` says why
no server can be started here (the binaries or psycopg absent), or None.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

USER = "postgres"  # the cluster's superuser (trust authentication, local connections only)
INSTALL = "make postgresql (Debian's postgresql package, installed with apt-get)"


def bin_dir() -> Path | None:
    """The folder of initdb and pg_ctl: Debian's /usr/lib/postgresql/<version>/bin, the newest."""
    for found in sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(re.search(r"/(\d+)/bin/", p).group(1)),
        reverse=True,
    ):
        return Path(found).parent
    on_path = shutil.which("initdb")
    return Path(on_path).resolve().parent if on_path else None


def missing() -> str | None:
    """Why a test server cannot be started here, or None when it can."""
    if bin_dir() is None or not (bin_dir() / "pg_ctl").exists():
        return f"PostgreSQL's server (initdb, pg_ctl) is not installed: {INSTALL} installs it"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed: pip install -r requirements.txt"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser: PostgreSQL must run as another user"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """One running cluster; `url(dbname)` for SQLAlchemy (psycopg 3)."""

    def __init__(self, folder: Path, port: int, bins: Path, as_user: list[str]):
        self.folder, self.port, self.bins, self._as_user = folder, port, bins, as_user

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def log(self) -> Path:
        return self.folder / "server.log"

    @classmethod
    def start(cls, tmpdir: str | Path | None = None) -> PostgresServer:
        """initdb and start a server in a new folder under `tmpdir` (default: the system's)."""
        reason = missing()
        if reason:
            raise RuntimeError(reason)
        folder = Path(tempfile.mkdtemp(prefix="tl-postgres-", dir=tmpdir))
        as_user: list[str] = []
        if os.geteuid() == 0:  # postgres will not run as root: hand the folder to nobody
            as_user = ["runuser", "-u", "nobody", "--"]
            shutil.chown(folder, "nobody")
            if not _reachable_by_nobody(folder):
                shutil.rmtree(folder)
                folder = Path(tempfile.mkdtemp(prefix="tl-postgres-"))
                shutil.chown(folder, "nobody")
        bins = bin_dir()
        _run(
            as_user
            + [
                str(bins / "initdb"),
                "-D",
                str(folder / "data"),
                "-U",
                USER,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
            "initdb",
        )
        for attempt in range(3):  # a free port can be taken between finding it and listening on it
            server = cls(folder, _free_port(), bins, as_user)
            try:
                server._pg_ctl_start()
                server._watch(os.getpid())
                return server
            except RuntimeError:
                if attempt == 2:
                    shutil.rmtree(folder, ignore_errors=True)
                    raise
        raise AssertionError("unreachable")

    def _pg_ctl_start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.folder} -c fsync=off "
            f"-c synchronous_commit=off -c full_page_writes=off -c max_connections=300"
        )
        _run(
            self._as_user
            + [
                str(self.bins / "pg_ctl"),
                "start",
                "-w",
                "-t",
                "60",
                "-D",
                str(self.data),
                "-l",
                str(self.log),
                "-o",
                options,
            ],
            "pg_ctl start",
            self.log,
        )

    def _watch(self, owner: int) -> None:
        """A watcher that stops the server if its owner dies without stop() (a test run killed by
        `timeout`), so no server outlives its session on a shared machine."""
        stop = self._as_user + [str(self.bins / "pg_ctl"), "stop", "-m", "immediate", "-D", str(self.data)]
        subprocess.Popen(
            [sys.executable, "-c", _WATCHER, str(owner), str(self.folder), *stop],
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql+psycopg://{USER}@127.0.0.1:{self.port}/{dbname}"

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user=USER, dbname="postgres", autocommit=True) as c:
            c.execute(sql)

    def create_database(self, name: str) -> str:
        """A new, empty database; its URL."""
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
            raise ValueError(f"database name {name!r}: use lower-case letters, digits and _ (63 at most)")
        self._admin(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop it, closing whatever is still connected to it."""
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        """Stop the server (immediately: the data is thrown away) and remove its folder."""
        try:
            subprocess.run(
                self._as_user + [str(self.bins / "pg_ctl"), "stop", "-m", "immediate", "-w", "-D", str(self.data)],
                capture_output=True,
                timeout=60,
            )
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)


_WATCHER = """
import os, shutil, subprocess, sys, time
owner, folder, stop = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
while os.path.isdir(folder):  # gone: stopped the ordinary way
    try:
        os.kill(owner, 0)
    except ProcessLookupError:
        subprocess.run(stop, capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)
        break
    time.sleep(1)
"""


def _reachable_by_nobody(folder: Path) -> bool:
    return subprocess.run(["runuser", "-u", "nobody", "--", "test", "-w", str(folder)]).returncode == 0


def _run(cmd: list[str], what: str, log: Path | None = None) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        tail = log.read_text()[-2000:] if log is not None and log.exists() else ""
        raise RuntimeError(f"{what} failed ({done.returncode}): {done.stderr[-2000:]}{tail}")
