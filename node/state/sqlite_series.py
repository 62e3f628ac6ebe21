"""The SQLite :class:`~node.state.SeriesIndex`: received instances grouped into series, and series claims.

A series moves ``receiving -> complete -> exported`` (or ``failed``); a new instance re-opens it (``receiving``
again, its ``revision`` bumped), so a late instance produces a new export. Work on a series (completion, export)
is claimed first: :meth:`SqliteSeriesIndex.claim_due` and :meth:`~SqliteSeriesIndex.claim_in_state` mark the rows
with this node's id and a lease in one transaction, so two nodes never take the same series; a claim whose
lease ran out is taken over. :meth:`~SqliteSeriesIndex.mark` completes a claim and releases it.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable
from pathlib import Path

from node.errors import InputError
from node.state.model import FINISHED_SERIES, HINT_GRACE_SECONDS, SeriesRow, SeriesState
from node.state.sqlite_schema import ClaimingStore, now_or_clock

log = logging.getLogger(__name__)

_SERIES_SELECT = """
    SELECT s.*, (SELECT COUNT(*) FROM instances i WHERE i.series_uid = s.series_uid) AS instance_count
    FROM series s
"""

_DUE = (
    "s.state = 'receiving' AND (s.last_received_at <= :quiet_before OR (s.hint_at IS NOT NULL"
    " AND s.hint_at >= s.last_received_at AND s.hint_at <= :hinted_before))"
)
_CLAIMABLE = "(s.claimed_by IS NULL OR s.lease_until < :now)"
#: What retention may remove (the states are spliced in as literals of SeriesState values, never user text): old,
#: unclaimed, and no job needs it: none unfinished or finished recently refers to it, and none waits to be matched
#: (it may match any series by geometry or name).
_EXPIRED = (
    "s.state IN ({states}) AND MAX(s.last_received_at, s.updated_at) < :before AND " + _CLAIMABLE + " AND NOT EXISTS"
    " (SELECT 1 FROM jobs j WHERE j.series_uid = s.series_uid AND (j.state NOT IN ('sent', 'failed')"
    " OR j.updated_at >= :before)) AND NOT EXISTS"
    " (SELECT 1 FROM jobs j WHERE j.series_uid IS NULL AND j.state NOT IN ('sent', 'failed'))"
)


def _expired(states: Iterable[SeriesState | str]) -> str:
    values = sorted({SeriesState(state).value for state in states})
    if not values:
        raise InputError("retention: no series state given to remove series in")
    return _EXPIRED.format(states=", ".join(f"'{value}'" for value in values))


def _series_row(row: sqlite3.Row) -> SeriesRow:
    return SeriesRow(
        series_uid=row["series_uid"],
        study_uid=row["study_uid"],
        state=SeriesState(row["state"]),
        reason=row["reason"],
        first_received_at=row["first_received_at"],
        last_received_at=row["last_received_at"],
        hint_at=row["hint_at"],
        revision=row["revision"],
        export_version=row["export_version"],
        instance_count=row["instance_count"],
        claimed_by=row["claimed_by"],
        lease_until=row["lease_until"],
    )


class SqliteSeriesIndex(ClaimingStore):
    """Series and their instances in one SQLite database (see the module docstring).

    Parameters
    ----------
    database
        Where the rows are.
    node_id
        Who claims (unique per running node process).
    lease_seconds
        How long a claim holds before another node may take it over.
    """

    def record_instance(
        self,
        series_uid: str,
        study_uid: str,
        sop_uid: str,
        sop_class_uid: str,
        path: Path,
        size: int,
        received_at: float,
    ) -> bool:
        """Index one stored instance (insert, or replace a re-sent one) and keep its series receiving.

        Returns True when the instance re-opened a series that was complete, exported or failed. A claim on the
        series stays; the claimer's :meth:`mark` with ``if_revision`` then finds the series changed.
        """
        with self.database.writing(f"record instance {sop_uid}") as conn:
            previous = conn.execute("SELECT state FROM series WHERE series_uid = ?", (series_uid,)).fetchone()
            if previous is None:
                conn.execute(
                    "INSERT INTO series (series_uid, study_uid, state, first_received_at, last_received_at,"
                    " updated_at) VALUES (?, ?, 'receiving', ?, ?, ?)",
                    (series_uid, study_uid, received_at, received_at, received_at),
                )
            else:
                conn.execute(
                    "UPDATE series SET state = 'receiving', reason = NULL, revision = revision + 1,"
                    " last_received_at = MAX(last_received_at, ?), updated_at = ? WHERE series_uid = ?",
                    (received_at, received_at, series_uid),
                )
            conn.execute(
                "INSERT INTO instances (series_uid, sop_uid, sop_class_uid, path, size, received_at)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (series_uid, sop_uid) DO UPDATE SET"
                " sop_class_uid = excluded.sop_class_uid, path = excluded.path, size = excluded.size,"
                " received_at = excluded.received_at",
                (series_uid, sop_uid, sop_class_uid, self.paths.store(path), size, received_at),
            )
        reopened = previous is not None and previous["state"] != SeriesState.RECEIVING.value
        if reopened:
            log.info("series %s re-opened by instance %s (was %s)", series_uid, sop_uid, previous["state"])
        return reopened

    def hint_complete(self, series_uids: Iterable[str], now: float | None = None) -> int:
        """Note that an association that sent these series was released at ``now``.

        A hinted series becomes due :data:`~node.state.model.HINT_GRACE_SECONDS` after the hint, but only while
        no instance of it arrived after the hint. Returns how many series were hinted.
        """
        uids = list(dict.fromkeys(series_uids))
        if not uids:
            return 0
        stamp = now_or_clock(now)
        hinted = 0
        with self.database.writing(f"hint {len(uids)} series complete") as conn:
            for uid in uids:
                cursor = conn.execute(
                    "UPDATE series SET hint_at = ? WHERE series_uid = ? AND state = 'receiving'", (stamp, uid)
                )
                hinted += cursor.rowcount
        return hinted

    def claim_due(
        self,
        quiet_seconds: float,
        *,
        now: float | None = None,
        grace_seconds: float = HINT_GRACE_SECONDS,
        limit: int | None = None,
    ) -> list[SeriesRow]:
        """Claim the series due for completion that no other node holds, oldest first.

        Due: still receiving, and the last instance older than the quiet period, or hinted and quiet since the
        hint for ``grace_seconds``.
        """
        stamp = now_or_clock(now)
        return self._claim(
            _DUE,
            {"quiet_before": stamp - quiet_seconds, "hinted_before": stamp - grace_seconds},
            stamp,
            limit,
            "s.last_received_at",
        )

    def claim_in_state(
        self, state: SeriesState | str, *, now: float | None = None, limit: int | None = None
    ) -> list[SeriesRow]:
        """Claim the series in ``state`` (e.g. COMPLETE, to export them) that no other node holds, oldest first."""
        return self._claim(
            "s.state = :state", {"state": SeriesState(state).value}, now_or_clock(now), limit, "s.updated_at"
        )

    def _claim(
        self, condition: str, params: dict[str, object], now: float, limit: int | None, order: str
    ) -> list[SeriesRow]:
        query = f"SELECT s.series_uid FROM series s WHERE {condition} AND {_CLAIMABLE} ORDER BY {order}, s.series_uid"
        if limit is not None:
            query += f" LIMIT {int(limit)}"
        with self.database.writing("claim series") as conn:
            uids = [row[0] for row in conn.execute(query, {**params, "now": now}).fetchall()]
            for uid in uids:
                conn.execute(
                    "UPDATE series SET claimed_by = ?, lease_until = ? WHERE series_uid = ?",
                    (self.node_id, now + self.lease_seconds, uid),
                )
            claimed = [conn.execute(_SERIES_SELECT + " WHERE s.series_uid = ?", (uid,)).fetchone() for uid in uids]
        return [_series_row(row) for row in claimed]

    def mark(
        self,
        series_uid: str,
        state: SeriesState | str,
        *,
        reason: str | None = None,
        export_version: int | None = None,
        if_revision: int | None = None,
        now: float | None = None,
    ) -> bool:
        """Move a claimed series to ``state`` and release the claim (one transaction).

        Parameters
        ----------
        state
            A :class:`~node.state.model.SeriesState` or its value.
        reason
            Why (for ``failed``); cleared when None.
        export_version
            For ``exported``: the revision exported; defaults to the series' current revision.
        if_revision
            Apply only if the series' revision is still this one (no instance arrived since it was claimed).

        Returns
        -------
        bool
            False, and nothing but the release of this node's claim done, when the series changed since
            (``if_revision``) or this node no longer holds its claim (another node took it over).

        Raises
        ------
        InputError
            The series is not known.
        """
        state = SeriesState(state)
        stamp = now_or_clock(now)
        with self.database.writing(f"mark series {series_uid} {state.value}") as conn:
            row = conn.execute("SELECT revision, claimed_by FROM series WHERE series_uid = ?", (series_uid,)).fetchone()
            if row is None:
                raise InputError(f"series {series_uid} is not known to this node; check the UID with `segnode status`")
            if row["claimed_by"] != self.node_id:
                log.warning(
                    "series %s: claim lost to %s; not marked %s here",
                    series_uid,
                    row["claimed_by"] or "a node that finished it",
                    state.value,
                )
                return False
            if if_revision is not None and row["revision"] != if_revision:
                log.info(
                    "series %s changed while being processed (revision %d -> %d); left receiving",
                    series_uid,
                    if_revision,
                    row["revision"],
                )
                self._release(conn, series_uid)
                return False
            if state is SeriesState.EXPORTED and export_version is None:
                export_version = row["revision"]
            conn.execute(
                "UPDATE series SET state = ?, reason = ?, export_version = COALESCE(?, export_version),"
                " hint_at = CASE WHEN ? = 'receiving' THEN hint_at ELSE NULL END, updated_at = ?,"
                " claimed_by = NULL, lease_until = NULL WHERE series_uid = ?",
                (state.value, reason, export_version, state.value, stamp, series_uid),
            )
        return True

    def release(self, series_uid: str) -> bool:
        """Give up this node's claim on a series without changing it; False when it held none."""
        with self.database.writing(f"release series {series_uid}") as conn:
            return self._release(conn, series_uid)

    def _release(self, conn: sqlite3.Connection, series_uid: str) -> bool:
        cursor = conn.execute(
            "UPDATE series SET claimed_by = NULL, lease_until = NULL WHERE series_uid = ? AND claimed_by = ?",
            (series_uid, self.node_id),
        )
        return cursor.rowcount > 0

    def release_claims(self) -> int:
        """Give up every series claim this node holds (on stop); returns how many."""
        with self.database.writing("release series claims") as conn:
            return conn.execute(
                "UPDATE series SET claimed_by = NULL, lease_until = NULL WHERE claimed_by = ?", (self.node_id,)
            ).rowcount

    def get(self, series_uid: str) -> SeriesRow | None:
        """One series, or None when unknown."""
        with self.database.reading(f"read series {series_uid}") as conn:
            row = conn.execute(_SERIES_SELECT + " WHERE s.series_uid = ?", (series_uid,)).fetchone()
        return None if row is None else _series_row(row)

    def instances(self, series_uid: str) -> list[Path]:
        """The stored files of a series (absolute paths), sorted; empty when the series is unknown."""
        with self.database.reading(f"read instances of series {series_uid}") as conn:
            rows = conn.execute("SELECT path FROM instances WHERE series_uid = ?", (series_uid,)).fetchall()
        return sorted(self.paths.load(row["path"]) for row in rows)

    def list_series(self, state: SeriesState | str | None = None, limit: int | None = None) -> list[SeriesRow]:
        """Known series, most recently received first, optionally only those in ``state``."""
        query = _SERIES_SELECT
        params: list[object] = []
        if state is not None:
            query += " WHERE s.state = ?"
            params.append(SeriesState(state).value)
        query += " ORDER BY s.last_received_at DESC, s.series_uid"
        if limit is not None:
            query += " LIMIT ?"
            params.append(int(limit))
        with self.database.reading("list series") as conn:
            return [_series_row(row) for row in conn.execute(query, params).fetchall()]

    def counts(self) -> dict[SeriesState, int]:
        """How many series are in each state (every state present, zero when none)."""
        counts = dict.fromkeys(SeriesState, 0)
        with self.database.reading("count series") as conn:
            for row in conn.execute("SELECT state, COUNT(*) AS n FROM series GROUP BY state"):
                counts[SeriesState(row["state"])] = row["n"]
        return counts

    def expired_series(
        self,
        before: float,
        *,
        states: Iterable[SeriesState | str] = FINISHED_SERIES,
        now: float | None = None,
        limit: int | None = None,
    ) -> list[SeriesRow]:
        """Series retention may remove (see :meth:`node.state.SeriesIndex.expired_series`), oldest first."""
        query = _SERIES_SELECT + f" WHERE {_expired(states)} ORDER BY s.last_received_at, s.series_uid"
        if limit is not None:
            query += f" LIMIT {int(limit)}"
        with self.database.reading("list expired series") as conn:
            rows = conn.execute(query, {"before": before, "now": now_or_clock(now)}).fetchall()
        return [_series_row(row) for row in rows]

    def remove_series(
        self,
        series_uid: str,
        *,
        before: float,
        states: Iterable[SeriesState | str] = FINISHED_SERIES,
        now: float | None = None,
    ) -> list[Path] | None:
        """Delete the rows of an expired series and its instances in one transaction, checking in it that the
        series is still expired; the instance files (absolute) the rows named, or None when the series was kept."""
        params = {"uid": series_uid, "before": before, "now": now_or_clock(now)}
        with self.database.writing(f"remove series {series_uid}") as conn:
            found = conn.execute(
                f"SELECT 1 FROM series s WHERE s.series_uid = :uid AND {_expired(states)}", params
            ).fetchone()
            if found is None:
                return None
            rows = conn.execute("SELECT path FROM instances WHERE series_uid = ?", (series_uid,)).fetchall()
            # Its instances go with it: ON DELETE CASCADE (foreign keys are on in every connection, see connect()).
            conn.execute("DELETE FROM series WHERE series_uid = ?", (series_uid,))
        log.debug("series %s removed from the index (%d instances)", series_uid, len(rows))
        return sorted(self.paths.load(row["path"]) for row in rows)
