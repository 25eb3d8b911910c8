"""PostgreSQL for tests: one server per test process, a fresh database per caller.

Usage (from a test under ``tests/integration``)::

    from tests.integration.pg import fresh_postgres_database, postgres_url

    url = postgres_url()                 # skips (or fails when CI=true) without PostgreSQL
    with fresh_postgres_database() as url:   # CREATE DATABASE ... / DROP DATABASE afterwards
        ...

``postgres_url()`` runs ``scripts/postgres.sh`` once per process (or takes
``IOTRUST_TEST_POSTGRES_URL``) and returns the URL of a database it created for this process;
that database is dropped, and a private cluster the script started is stopped, at exit.
This helper never touches databases it did not create.
"""

from __future__ import annotations

import atexit
import os
import re
import secrets
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from sqlalchemy.engine import make_url
from tests.conftest import missing_component

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "postgres.sh"
ENV_URL = "IOTRUST_TEST_POSTGRES_URL"

_lock = threading.Lock()
_state: dict[str, str] = {}


def _unavailable(problem: str) -> None:
    """Skip the calling test without PostgreSQL; fail instead when ``CI=true``."""
    missing_component(f"PostgreSQL ({problem})")


def _libpq(url: str) -> str:
    """The SQLAlchemy URL as a libpq connection string."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _start() -> None:
    env_url = os.environ.get(ENV_URL)
    if env_url:
        _state["url"] = env_url
        return
    try:
        result = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True,
                                timeout=600, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        _state["error"] = f"{SCRIPT.name}: {exc}"
        return
    url = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    if result.returncode != 0 or not url.startswith("postgresql"):
        _state["error"] = f"{SCRIPT.name} exited {result.returncode}: {result.stderr.strip()}"
        return
    _state["url"] = url
    pgdata = re.search(r"^pgdata=(.+)$", result.stderr, re.MULTILINE)
    pg_ctl = re.search(r"^pg_ctl=(.+)$", result.stderr, re.MULTILINE)
    if pgdata and pg_ctl:
        atexit.register(_stop_cluster, pg_ctl.group(1), pgdata.group(1))
    else:
        admin = make_url(url).set(database="postgres").render_as_string(hide_password=False)
        atexit.register(_drop, url, admin)


def _stop_cluster(pg_ctl: str, pgdata: str) -> None:
    cmd = [pg_ctl, "-D", pgdata, "stop", "-m", "fast"]
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    subprocess.run(cmd, capture_output=True, check=False, timeout=120)


def _drop(url: str, via: str) -> None:
    """Drop the database ``url`` names, connected to the database ``via`` names."""
    try:
        with psycopg.connect(_libpq(via), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)')
    except psycopg.Error:
        pass  # best effort at exit; the name is random and the server is for tests


def postgres_url() -> str:
    """The URL of this process's test database (skips/fails the test when impossible)."""
    with _lock:
        if not _state:
            _start()
    if "url" not in _state:
        _unavailable(_state.get("error", "unknown error"))
    return _state["url"]


@contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """A new empty database on the test server, dropped (forcefully) afterwards."""
    base_url = postgres_url()
    base = make_url(base_url)
    name = f"iotrust_test_{secrets.token_hex(6)}"
    try:
        with psycopg.connect(_libpq(base_url), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as exc:
        _unavailable(f"cannot create a database: {exc}")
    url = base.set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        _drop(url, base_url)
