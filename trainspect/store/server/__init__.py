"""The team store: runs streamed from their local spool files into PostgreSQL.

`sync` pushes a local run file to the server (a background thread of a live run,
or `trainspect sync`), `reader` reads the server back with the same API as a runs
directory, `schema` holds the versioned migrations. psycopg 3 is imported only
when a server is used (`pip install 'trainspect[team]'`).
"""
