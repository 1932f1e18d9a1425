"""The embedded per-run store: one SQLite file per run (schema, writer thread, reader).

Nothing here imports torch: the store, the reader and the dashboard work without it.
"""
