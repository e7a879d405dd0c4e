"""A real, throwaway PostgreSQL server for the tests: Debian's `postgresql` binaries, a data folder in a temporary
directory, listening on 127.0.0.1 on a free port with password (scram) authentication, stopped and deleted at the
end. initdb refuses to run as root, so as root the server runs as the `postgres` user (`runuser`).

Used by the fixtures in tests/conftest.py: one server per test session, a fresh database per test.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import free_port

USER, PASSWORD = "align", "align-test-pw"
REQUIRE_ENV = "ALIGN_REQUIRE_POSTGRES"  # "1": no server is a failure, not a skip (set by .ci/run)
BIN_ENV = "ALIGN_POSTGRES_BIN"  # the folder with initdb and pg_ctl, when not the usual place


def find_bin_dir() -> Path | None:
    """The folder with initdb/pg_ctl: $ALIGN_POSTGRES_BIN, on PATH, else the newest
    /usr/lib/postgresql/<version>/bin."""
    if os.environ.get(BIN_ENV):
        folder = Path(os.environ[BIN_ENV])
        return folder if (folder / "initdb").is_file() else None
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


def unavailable_reason() -> str | None:
    """Why no server can be started here (None when one can)."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return 'the PostgreSQL driver is not installed (pip install -e ".[postgres]")'
    if find_bin_dir() is None:
        return "PostgreSQL binaries not found (apt-get install postgresql)"
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            return "running as root and runuser is missing (initdb refuses root)"
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no `postgres` user to run the server as"
    return None


def skip_or_fail(reason: str) -> None:
    """No server here: skip the test with the reason, or fail it when $ALIGN_REQUIRE_POSTGRES is 1."""
    import pytest

    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{REQUIRE_ENV}=1 but no PostgreSQL server can be started: {reason}")
    pytest.skip(f"no PostgreSQL server: {reason}")


@dataclass
class PostgresServer:
    bin_dir: Path
    root: Path  # temporary folder: data/, the password file, the log
    port: int
    _databases: int = 0
    _admin = None  # an AUTOCOMMIT engine on the `postgres` database, for CREATE DATABASE

    @property
    def data(self) -> Path:
        return self.root / "data"

    def url(self, database: str = "postgres", *, password: str = PASSWORD, port: int | None = None) -> str:
        return f"postgresql://{USER}:{password}@127.0.0.1:{port or self.port}/{database}"

    def _as_owner(self, *command: str) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else list(command)

    def _run(self, *command: str, timeout: float = 120) -> None:
        result = subprocess.run(self._as_owner(*command), capture_output=True, text=True, timeout=timeout)
        if result.returncode:
            log = (self.root / "server.log").read_text(errors="replace")[-2000:] if (self.root / "server.log").exists() else ""
            raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}{result.stderr}{log}")

    def start(self) -> "PostgresServer":
        password_file = self.root / "password"
        password_file.write_text(PASSWORD + "\n")
        if os.geteuid() == 0:
            record = pwd.getpwnam("postgres")
            for path in (self.root, password_file):
                os.chown(path, record.pw_uid, record.pw_gid)
        self._run(str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", USER, f"--pwfile={password_file}",
                  "--auth-host=scram-sha-256", "--auth-local=scram-sha-256", "-E", "UTF8", "--no-sync")
        # A test server: no fsync (only the label server is killed in the tests, never PostgreSQL itself),
        # a socket folder of its own, TCP on loopback only.
        options = (f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.root} "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "server.log"),
                  "-o", options, "-w", "-t", "120", "start", timeout=150)
        return self

    def stop(self) -> None:
        if self._admin is not None:
            self._admin.dispose()
        try:
            self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop", timeout=60)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def new_database(self) -> str:
        """A fresh, empty database; returns its URL (postgresql://user:password@127.0.0.1:port/name)."""
        import sqlalchemy as sa

        if self._admin is None:
            self._admin = sa.create_engine(self.url().replace("postgresql://", "postgresql+psycopg://"),
                                           isolation_level="AUTOCOMMIT", poolclass=sa.pool.StaticPool)
        self._databases += 1
        name = f"test_{self._databases}"
        with self._admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        return self.url(name)


def start_server() -> PostgresServer:
    """Start a throwaway server (see the module docstring). Call `stop()` when done."""
    bin_dir = find_bin_dir()
    assert bin_dir is not None, unavailable_reason()
    root = Path(tempfile.mkdtemp(prefix="align-pg-"))
    server = PostgresServer(bin_dir, root, free_port())
    try:
        return server.start()
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
