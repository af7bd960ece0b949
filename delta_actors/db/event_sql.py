"""Statements of resource events (`delta_event`) and their subscribers (`delta_subscriber`)."""

from __future__ import annotations

from typing import LiteralString

# The start cursor: every transaction below the xmin of this statement's snapshot has
# ended, so results written by statements that start after this commit sort at or after it.
# A reader whose lease lapsed registers again at its own cursor (`after_xid`).
REGISTER_SUBSCRIBER: LiteralString = """
INSERT INTO delta_subscriber (host, pid, kinds, events, cursor_xid, expires_at)
VALUES (%(host)s, %(pid)s, %(kinds)s::text[], %(events)s::delta_resource_state[],
        coalesce(%(after_xid)s::text::xid8, pg_snapshot_xmin(pg_current_snapshot())),
        now() + make_interval(secs => %(ttl)s))
RETURNING id, cursor_xid::text::bigint
"""

# Renews the lease and records how far the reader got; no row: the lease had lapsed.
RENEW_SUBSCRIBER: LiteralString = """
UPDATE delta_subscriber
SET expires_at = now() + make_interval(secs => %(ttl)s),
    cursor_xid = greatest(cursor_xid, %(cursor_xid)s::text::xid8)
WHERE id = %(id)s AND expires_at > now()
RETURNING id
"""

UNREGISTER_SUBSCRIBER: LiteralString = "DELETE FROM delta_subscriber WHERE id = %s"

# Only rows of transactions below the snapshot's xmin: those have all ended, so no row can
# appear before the cursor later (a plain `id > cursor` skips rows of transactions that
# commit out of id order). Filters apply in the reader, so the cursor passes rows that
# other subscribers wanted.
SELECT_EVENTS: LiteralString = """
SELECT xid::text::bigint, id, kind, object_id, event::text, generation, error, at
FROM delta_event
WHERE (xid, id) > (%(xid)s::text::xid8, %(id)s::bigint)
  AND xid < pg_snapshot_xmin(pg_current_snapshot())
ORDER BY xid, id
LIMIT %(limit)s
"""

# Events every live subscriber has read (every ended one once none is live), oldest first.
DELETE_READ_EVENTS: LiteralString = """
WITH old AS (
    SELECT e.xid, e.id FROM delta_event AS e
    WHERE e.xid < (SELECT coalesce(min(s.cursor_xid), pg_snapshot_xmin(pg_current_snapshot()))
                   FROM delta_subscriber AS s WHERE s.expires_at > now())
    ORDER BY e.xid, e.id
    LIMIT %(limit)s
)
DELETE FROM delta_event AS e USING old WHERE e.xid = old.xid AND e.id = old.id
"""

# Leases that lapsed a while ago (a reader that resumes re-registers and reports a gap).
DELETE_LAPSED_SUBSCRIBERS: LiteralString = """
DELETE FROM delta_subscriber WHERE expires_at < now() - make_interval(secs => %(grace)s)
"""
