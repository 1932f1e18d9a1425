"""A throwaway local PostgreSQL cluster: `initdb` + `pg_ctl` in a temporary directory.

For the tests, the benchmark and trying the team store on one machine. It finds
Debian's or any installed server binaries, runs them as an unprivileged user when
called as root (initdb refuses root), listens on 127.0.0.1 on a free port with
trust authentication, and can be stopped, killed and started again on the same
port and data directory (the fault tests restart a server mid-run).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from trainspect.errors import TrainspectError

SUPERUSER = "trainspect"


def server_bindir() -> Path | None:
    """The directory holding `initdb`, `pg_ctl` and `postgres`, or None if none is installed."""
    candidates = []
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(Path(on_path).parent)
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    candidates += [Path("/usr/local/pgsql/bin"), Path("/opt/homebrew/bin")]
    for folder in candidates:
        if all((folder / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return folder
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalCluster:
    """One throwaway server: `start()`, `url`, `stop()`, `kill()`, `remove()`."""

    def __init__(self, bindir: Path | None = None, port: int | None = None,
                 root: Path | None = None) -> None:
        found = bindir or server_bindir()
        if found is None:
            raise TrainspectError("no PostgreSQL server binaries found (initdb, pg_ctl): "
                                  "install Debian's `postgresql` package")
        self.bindir = found
        self.port = port or free_port()
        self.root = Path(root or tempfile.mkdtemp(prefix="trainspect-pg-"))
        self.data = self.root / "data"
        self.user = _unprivileged_user()
        if self.user is not None:
            uid, gid = self.user.pw_uid, self.user.pw_gid
            os.chown(self.root, uid, gid)
        self._initialised = False

    @property
    def url(self) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/postgres"

    def url_for(self, database: str) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str, check: bool = True, timeout: float = 120.0) -> str:
        command = [str(self.bindir / args[0]), *args[1:]]
        if self.user is not None:
            command = ["runuser", "-u", self.user.pw_name, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              cwd=self.root)
        if check and done.returncode != 0:
            raise TrainspectError(f"{args[0]} failed ({done.returncode}): "
                                  f"{(done.stderr or done.stdout).strip()[-2000:]}")
        return done.stdout

    def start(self) -> LocalCluster:
        """initdb on first use, then start the server and wait until it accepts connections."""
        if not self._initialised and not (self.data / "PG_VERSION").exists():
            self._run("initdb", "-D", str(self.data), "-U", SUPERUSER, "--auth=trust",
                      "-E", "UTF8", "--no-sync", "--locale=C")
            self._initialised = True
        options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories="
                   f"{self.root} -c fsync=off -c full_page_writes=off -c max_connections=200")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"),
                  "-o", options, "-w", "-t", "60", "start")
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1.0):
                    return
            except OSError:
                time.sleep(0.05)
        raise TrainspectError(f"the local PostgreSQL on port {self.port} did not start")

    def stop(self) -> None:
        """A fast shutdown (clients are disconnected, committed work is kept)."""
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop", check=False)

    def kill(self) -> None:
        """An immediate shutdown: like a crashed server (recovery replays the WAL on start)."""
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop",
                      check=False)

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url_for(name)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.remove()


def _unprivileged_user() -> pwd.struct_passwd | None:
    """The user to run the server as when we are root (initdb refuses root), else None."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise TrainspectError("running as root, and neither a `postgres` nor a `nobody` user "
                          "exists to run a local PostgreSQL as")
