from tests.pg import own_cluster, pg_admin_url, pg_url  # noqa: F401 - fixtures
