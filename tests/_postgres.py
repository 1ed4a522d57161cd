"""A throwaway PostgreSQL server for the distributed-search tests.

``postgres_server()`` runs ``initdb`` and ``pg_ctl`` itself: a data directory in a fresh
temporary folder, a free port on 127.0.0.1, the Unix socket inside that folder (so nothing
touches the system's /var/run/postgresql), and ``pg_ctl stop`` plus removal on exit.

PostgreSQL refuses to run as root, so when the tests run as root the server commands run as
the ``postgres`` OS user (``runuser``), and the folder is handed to that user. Authentication:
``trust`` for the ``postgres`` role on loopback (the tests connect without a password) and
``scram-sha-256`` for every other role, so that a test can check a wrong password.

Nothing here imports autoclip; ``find_bin_dir()`` returning None is the one reason to skip.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

SERVER_USER = "postgres"  # the OS user the server runs as when we are root
SUPERUSER = "postgres"  # the database superuser initdb creates (trust on loopback)
_BINARIES = ("initdb", "pg_ctl", "postgres")


def find_bin_dir() -> str | None:
    """The folder holding initdb, pg_ctl and postgres, or None when PostgreSQL is absent.

    PATH first (Debian links the newest version into /usr/local/bin or /usr/bin only
    sometimes), then the versioned Debian folders, newest first.
    """
    on_path = shutil.which("initdb")
    candidates = [os.path.dirname(os.path.realpath(on_path))] if on_path else []
    versions = glob.glob("/usr/lib/postgresql/*/bin")
    candidates += sorted(versions, key=lambda p: _version(p), reverse=True)
    for folder in candidates:
        if all(os.access(os.path.join(folder, b), os.X_OK) for b in _BINARIES):
            return folder
    return None


def _version(path: str) -> tuple[int, ...]:
    name = path.rstrip("/").split("/")[-2]
    return tuple(int(p) for p in name.split(".") if p.isdigit())


def skip_reason() -> str | None:
    """Why the PostgreSQL tests cannot run here, or None when they can."""
    if find_bin_dir() is None:
        return (
            "no PostgreSQL server binaries (initdb, pg_ctl, postgres) on PATH or in "
            "/usr/lib/postgresql/*/bin; install the Debian package postgresql to run these tests"
        )
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SERVER_USER)
        except KeyError:
            return f"running as root and there is no {SERVER_USER!r} OS user to run the server"
        if shutil.which("runuser") is None and shutil.which("su") is None:
            return "running as root and neither runuser nor su exists to drop privileges"
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Server:
    """A running server: where it listens and how to reach it."""

    host: str
    port: int
    socket_dir: str
    bin_dir: str

    def url(self, database: str = "postgres", user: str = SUPERUSER, password: str = "") -> str:
        auth = f"{user}:{password}" if password else user
        return f"postgresql://{auth}@{self.host}:{self.port}/{database}"

    def execute(self, sql: str, database: str = "postgres") -> None:
        """Run one statement as the superuser, outside a transaction (CREATE DATABASE...)."""
        import psycopg2

        conn = psycopg2.connect(
            host=self.host, port=self.port, user=SUPERUSER, dbname=database, connect_timeout=10
        )
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(sql)
        finally:
            conn.close()

    def create_database(self, name: str) -> str:
        """Create an empty database and return the superuser's URL for it."""
        self.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def _run_as_server_user(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    if os.geteuid() == 0:
        if shutil.which("runuser"):
            cmd = ["runuser", "-u", SERVER_USER, "--", *cmd]
        else:
            cmd = ["su", SERVER_USER, "-s", "/bin/sh", "-c", " ".join(map(_quote, cmd))]
    # A clean locale and no PG* variables, so the caller's environment cannot redirect us.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(LC_ALL="C", LANG="C")
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, **kw)


def _quote(s: str) -> str:
    import shlex

    return shlex.quote(s)


def _check(proc: subprocess.CompletedProcess, what: str, log: str | None = None) -> None:
    if proc.returncode == 0:
        return
    tail = ""
    if log and os.path.exists(log):
        with open(log, errors="replace") as f:
            tail = "\n--- server log ---\n" + f.read()[-4000:]
    raise RuntimeError(
        f"{what} failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}{tail}"
    )


PREFIX = "autoclip-pg-"  # temporary folders of servers started here
OWNER = "owner.pid"  # the process that started a server, written beside its data


def _stop(bin_dir: str, data: str) -> None:
    _run_as_server_user(
        [os.path.join(bin_dir, "pg_ctl"), "-D", data, "-m", "immediate", "-w", "stop"]
    )


def _sweep(bin_dir: str) -> None:
    """Stop and delete servers whose starting process died without cleaning up (a test run
    killed by a CI timeout): they would otherwise run until the machine stops."""
    for root in glob.glob(os.path.join(tempfile.gettempdir(), PREFIX + "*")):
        try:
            with open(os.path.join(root, OWNER)) as f:
                owner = int(f.read())
            os.kill(owner, 0)
            continue  # its owner still runs
        except ProcessLookupError:
            pass
        except (OSError, ValueError):
            continue  # not ours to judge
        if os.path.exists(os.path.join(root, "data", "postmaster.pid")):
            _stop(bin_dir, os.path.join(root, "data"))
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """Turn SIGTERM into SystemExit while the server runs, so the cleanup below runs too."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous is not signal.SIG_DFL:
        yield
        return

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def postgres_server() -> Iterator[Server]:
    """Start a private PostgreSQL server on 127.0.0.1; stop it and delete its files on exit.

    Raises RuntimeError (with the server log) when the server does not come up; callers
    skip only on :func:`skip_reason`, so that a broken server fails loudly.
    """
    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise RuntimeError(skip_reason())
    _sweep(bin_dir)
    # Directly under the system temp folder: pytest's tmp_path sits in a root-only (0700)
    # folder that the postgres user could not enter.
    root = tempfile.mkdtemp(prefix=PREFIX)
    with open(os.path.join(root, OWNER), "w") as f:
        f.write(str(os.getpid()))
    data, log = os.path.join(root, "data"), os.path.join(root, "server.log")
    if os.geteuid() == 0:
        user = pwd.getpwnam(SERVER_USER)
        os.chown(root, user.pw_uid, user.pw_gid)
    started = False
    try:
        with _sigterm_unwinds():
            _initdb(bin_dir, root, data)
            for attempt in range(3):  # the free port can be taken between probing and binding
                port = free_port()
                proc = _run_as_server_user(
                    [
                        os.path.join(bin_dir, "pg_ctl"),
                        "-D",
                        data,
                        "-l",
                        log,
                        "-w",
                        "-t",
                        "60",
                        "-o",
                        f"-p {port} {_options(root)}",
                        "start",
                    ]
                )
                if proc.returncode == 0:
                    started = True
                    break
                if attempt == 2:
                    _check(proc, "pg_ctl start", log)
            yield Server(host="127.0.0.1", port=port, socket_dir=root, bin_dir=bin_dir)
    finally:
        if started:
            _stop(bin_dir, data)
        shutil.rmtree(root, ignore_errors=True)


def _initdb(bin_dir: str, root: str, data: str) -> None:
    cmd = [
        os.path.join(bin_dir, "initdb"),
        *("-D", data, "-U", SUPERUSER, "--auth=trust", "--encoding=UTF8"),
        "--no-sync",  # a throwaway cluster: skip fsync, initdb takes a second
    ]
    _check(_run_as_server_user(cmd), "initdb")
    with open(os.path.join(data, "pg_hba.conf"), "w") as f:
        f.write(
            "local all all trust\n"
            f"host all {SUPERUSER} 127.0.0.1/32 trust\n"
            "host all all 127.0.0.1/32 scram-sha-256\n"
        )


def _options(root: str) -> str:
    return " ".join(
        [
            "-c listen_addresses=127.0.0.1",
            f"-c unix_socket_directories={root}",
            "-c fsync=off",  # durability is not under test; speed is welcome
            "-c synchronous_commit=off",
            "-c full_page_writes=off",
            "-c max_connections=200",  # each worker holds a pool plus a heartbeat thread
        ]
    )
