"""`ts.open("postgresql://...")`: the team store's runs, with the directory reader's API.

`runs()` lists runs newest first in three queries however many there are (their
rows, their headline values, the alerts of those that have any), and can search
by project, name, tag, status and config values on the server's indexes.
"""

from __future__ import annotations

import re
import time
from typing import Any

from trainspect.errors import TrainspectError
from trainspect.store.reader import STALE_HEARTBEAT_S
from trainspect.store.server import queries
from trainspect.store.server.pool import Pool
from trainspect.store.server.rows import alert
from trainspect.store.server.view import ServerRunView
from trainspect.summary import HEADLINE_KEYS

STATUSES = ("running", "finished", "failed", "crashed")
MAX_LISTED = 10  # runs named in an ambiguous reference's error


class ServerReader:
    """All runs in one team store (`ts.open(url)`)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.pool = Pool(url)
        self.where = self.pool.where
        self.root = self.where  # what messages name, like a directory reader's root
        self.headline_keys = frozenset(HEADLINE_KEYS)

    def __repr__(self) -> str:
        return f"ServerReader({self.where!r})"

    def close(self) -> None:
        self.pool.close()

    def __enter__(self) -> ServerReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def projects(self) -> list[str]:
        return [r[0] for r in self.pool.run(lambda conn: conn.execute(
            "SELECT DISTINCT project COLLATE \"C\" FROM trainspect.runs ORDER BY 1").fetchall())]

    def run_row(self, run_uid: int) -> Any:
        rows = self._rows(f"SELECT {queries.RUN_COLUMNS} FROM trainspect.runs "
                          "WHERE run_uid = %s", (run_uid,))
        return rows[0] if rows else None

    def _rows(self, sql: str, args: Any) -> list[Any]:
        """Rows of the runs table as named tuples (`row.run_id`, ...)."""
        from psycopg.rows import namedtuple_row

        def read(conn: Any) -> list[Any]:
            with conn.cursor(row_factory=namedtuple_row) as cur:  # binary: no text parsing
                return cur.execute(sql, args, binary=True).fetchall()

        return self.pool.run(read)

    def runs(self, project: str | None = None, *, name: str | None = None,
             tag: str | None = None, status: str | None = None,
             config: dict[str, Any] | None = None, run_id: str | None = None,
             limit: int | None = None, with_alerts: bool = False) -> list[ServerRunView]:
        """Runs newest first, optionally only those matching every filter given.

        `name` matches a prefix of the name, case-insensitively; `tag` one of the
        run's tags (meta `tags`); `status` running/finished/failed/crashed;
        `config` every key = value given (JSON equality, e.g. {"lr": 0.001});
        `run_id` exactly that id. Each view comes with its headline values (and with
        `with_alerts`, its alerts: the dashboard's list shows their count).
        """
        where, args = ["TRUE"], []
        if project is not None:
            where.append("project = %s")
            args.append(project)
        if run_id is not None:
            where.append("run_id = %s")
            args.append(run_id)
        if name:
            where.append("lower(name) LIKE %s")
            args.append(_like_prefix(name.lower()))
        if tag:
            where.append("tags @> ARRAY[%s]::text[]")
            args.append(tag)
        if status is not None:
            where.append(_status_filter(status))
            args.extend([] if status in ("finished", "failed") else [time.time()
                                                                     - STALE_HEARTBEAT_S])
        if config:
            from psycopg.types.json import Jsonb

            where.append("config @> %s")
            args.append(Jsonb(dict(config)))
        condition = " AND ".join(where)
        sql = (f"SELECT {queries.RUN_COLUMNS} FROM trainspect.runs WHERE {condition} "
               "ORDER BY started_at DESC NULLS LAST, run_id DESC")
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        rows = self._rows(sql, args)
        among = (condition, args) if limit is None else None  # else: by the rows' ids
        return self._views(rows, with_alerts, among)

    def _views(self, rows: list[Any], with_alerts: bool = False,
               among: tuple[str, list] | None = None) -> list[ServerRunView]:
        """Views of `rows`, each handed its headline values (and alerts) read in bulk.

        `among` is the rows' WHERE clause and arguments, so that the headline query
        selects the same runs without sending their ids back.
        """
        uids = [r.run_uid for r in rows]
        alerted = [r.run_uid for r in rows if r.alert_count] if with_alerts else []
        condition, args = among or ("run_uid = ANY(%s)", [uids])

        def read(conn: Any) -> tuple[list, list]:
            headline = conn.execute(
                "SELECT k.run_uid, k.name, k.vlast FROM trainspect.keys k WHERE k.name = ANY(%s)"
                " AND k.step_max IS NOT NULL AND k.run_uid IN (SELECT run_uid FROM "
                f"trainspect.runs WHERE {condition})",
                (sorted(self.headline_keys), *args), binary=True).fetchall() if uids else []
            alerts = conn.execute(
                f"SELECT t.run_uid, {queries.ALERT_COLUMNS} FROM trainspect.alerts t "
                "JOIN trainspect.spools sp ON sp.spool_uid = t.spool_uid "
                f"WHERE t.run_uid = ANY(%s) ORDER BY t.run_uid, {queries.SPOOL_ORDER}",
                (alerted,)).fetchall() if alerted else []
            return headline, alerts

        headline_rows, alert_rows = self.pool.run(read)
        headline: dict[int, dict[str, float]] = {uid: {} for uid in uids}
        for uid, name, value in headline_rows:
            if uid in headline:  # not a run created between the two queries
                headline[uid][name] = float("nan") if value is None else value
        alerts: dict[int, list[dict]] | None = None
        if with_alerts:
            alerts = {uid: [] for uid in uids}
            for uid, *row in alert_rows:
                alerts[uid].append(alert(tuple(row)))
        return [ServerRunView(self, row, headline[row.run_uid],
                              None if alerts is None else alerts[row.run_uid], bulk=True)
                for row in rows]

    def scan(self, project: str | None = None) -> tuple[list[ServerRunView], list]:
        """(runs newest first, unreadable ones): a store has no unreadable files."""
        return self.runs(project), []

    def run(self, ref: str) -> ServerRunView:
        """The run `ref` names, as in a runs directory (`trainspect.store.lookup`): its id,
        else a unique prefix or suffix of one, or a run's name; `project/<ref>` searches
        one project."""
        if not isinstance(ref, str) or not ref.strip("/ "):
            raise TrainspectError(f"expected a run id, a unique part of one, or a run name, "
                                  f"got {ref!r}")
        project, _, wanted = ref.rpartition("/")
        if not (project and self._rows("SELECT run_uid FROM trainspect.runs WHERE project = %s "
                                       "LIMIT 1", (project,))):
            project, wanted = "", ref  # no such project: a name may hold a '/'
        scope, args = ("project = %s AND ", [project]) if project else ("", [])
        select = f"SELECT {queries.RUN_COLUMNS} FROM trainspect.runs WHERE {scope}"
        rows = self._rows(select + "run_id = %s", (*args, wanted))
        if len(rows) != 1:
            rows = rows or self._rows(
                select + "(run_id LIKE %s OR run_id LIKE %s OR name = %s) "
                f"ORDER BY project, run_id LIMIT {MAX_LISTED + 1}",
                (*args, _like_prefix(wanted), "%" + _escape_like(wanted), wanted))
        if not rows:
            raise TrainspectError(
                f"no run {ref!r} in {self.where}: give a run id, a unique part of one (its "
                "last digits), or a run name; `trainspect ls --store` lists them")
        if len(rows) > 1:
            listed = ", ".join(f"{r.project}/{r.run_id}" + (f" ({r.name})" if r.name != r.run_id
                                                            else "") for r in rows[:MAX_LISTED])
            more = " and more" if len(rows) > MAX_LISTED else ""
            raise TrainspectError(f"{ref!r} matches {len(rows)}{'+' if more else ''} runs in "
                                  f"{self.where}: {listed}{more}; give the full id, or "
                                  "project/id")
        return self._views(rows)[0]


def _escape_like(text: str) -> str:
    return re.sub(r"([\\%_])", r"\\\1", text)


def _like_prefix(text: str) -> str:
    return _escape_like(text) + "%"


def _status_filter(status: str) -> str:
    """SQL for a status as `derive_status` sees it (crashed: running, heartbeat stale)."""
    if status not in STATUSES:
        raise TrainspectError(f"expected `status` to be one of {STATUSES}, got {status!r}")
    if status in ("finished", "failed"):
        return f"status = '{status}'"
    beat = "COALESCE(heartbeat_at, started_at, 0)"
    if status == "running":
        return f"status = 'running' AND {beat} >= %s"
    return f"status = 'running' AND {beat} < %s"
