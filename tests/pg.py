"""PostgreSQL for the tests: the CI's server, or a throwaway cluster started here.

`.ci/run` starts one cluster and exports its URL as $TRAINSPECT_TEST_PG_URL; run
directly with pytest, the first test that needs a server starts one (initdb +
pg_ctl in a temporary directory, see `trainspect.store.server.cluster`). Tests
are skipped only when this machine has no PostgreSQL server binaries at all.
Each test gets a database of its own, dropped afterwards.
"""

from __future__ import annotations

import os
import secrets

import pytest

from trainspect.store.server.cluster import LocalCluster, server_bindir

ENV_URL = "TRAINSPECT_TEST_PG_URL"


def needs_server_binaries() -> None:
    if os.environ.get(ENV_URL) is None and server_bindir() is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl) on this machine: "
                    "apt-get install postgresql")


@pytest.fixture(scope="session")
def pg_admin_url():
    """A superuser URL of a running server for the whole session."""
    given = os.environ.get(ENV_URL)
    if given:
        yield given
        return
    needs_server_binaries()
    cluster = LocalCluster().start()
    try:
        yield cluster.url
    finally:
        cluster.remove()


@pytest.fixture
def pg_url(pg_admin_url):
    """A fresh, empty database for one test; its URL."""
    import psycopg

    name = f"t_{secrets.token_hex(6)}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" STRATEGY FILE_COPY')
    url = pg_admin_url.rsplit("/", 1)[0] + "/" + name
    yield url
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def own_cluster():
    """A private server that a test may kill and restart (fault tests)."""
    if server_bindir() is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl) on this machine: "
                    "apt-get install postgresql")
    cluster = LocalCluster()
    try:
        yield cluster
    finally:
        cluster.remove()
