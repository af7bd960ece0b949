"""Statements of the lease (`delta_leader`) and the informer state (`delta_informer`).

`fence` in the informer statements: the write happens only while the given term holds an
unexpired lease, so a leader that lost its lease (paused, partitioned) cannot act.
"""

from __future__ import annotations

from typing import Final, LiteralString

LEADER_CHANNEL: Final = "delta_leader"

# Wins only a lease that has expired (or never existed), or this actor's own: a leader
# whose election connection broke stopped trusting its term at once, and takes its
# lease back under a new term as soon as it reconnects instead of leaving the cluster
# without a leader for up to a TTL. The term grows with each win.
ATTEMPT_ELECTION: LiteralString = """
INSERT INTO delta_leader AS l (name, actor_id, host, pid, term, elected_at, expires_at)
VALUES ('default', %(actor)s, %(host)s, %(pid)s, 1, now(), now() + make_interval(secs => %(ttl)s))
ON CONFLICT (name) DO UPDATE
    SET actor_id = excluded.actor_id, host = excluded.host, pid = excluded.pid,
        term = l.term + 1, elected_at = now(), expires_at = excluded.expires_at
    WHERE l.expires_at < now() OR l.actor_id = excluded.actor_id
RETURNING term
"""

RENEW_LEASE: LiteralString = """
UPDATE delta_leader SET expires_at = now() + make_interval(secs => %(ttl)s)
WHERE name = 'default' AND term = %(term)s AND actor_id = %(actor)s
RETURNING term
"""

# Frees the lease at once and wakes the candidates.
RESIGN_LEASE: LiteralString = """
WITH resigned AS (
    UPDATE delta_leader SET expires_at = now() - interval '1 second'
    WHERE name = 'default' AND term = %(term)s AND actor_id = %(actor)s
    RETURNING term
)
SELECT count(pg_notify('delta_leader', 'resigned')) FROM resigned
"""

SELECT_INFORMERS: LiteralString = """
SELECT kind, cursor, next_run_at <= now() FROM delta_informer WHERE kind = ANY(%s)
"""

ADD_INFORMERS: LiteralString = """
INSERT INTO delta_informer (kind) SELECT unnest(%s::text[]) ON CONFLICT (kind) DO NOTHING
"""

START_INFORMER: LiteralString = """
UPDATE delta_informer SET last_started_at = now()
WHERE kind = %(kind)s AND next_run_at <= now()
  AND EXISTS (SELECT 1 FROM delta_leader WHERE name = 'default' AND term = %(term)s
              AND actor_id = %(actor)s AND expires_at > now())
RETURNING cursor, now(), last_full_at
"""

FINISH_INFORMER: LiteralString = """
UPDATE delta_informer
SET cursor = coalesce(%(cursor)s, cursor), last_finished_at = now(), last_error = NULL,
    last_full_at = CASE WHEN %(full)s THEN last_started_at ELSE last_full_at END,
    runs = runs + 1, objects = objects + %(objects)s,
    next_run_at = now() + make_interval(secs => %(next_in)s)
WHERE kind = %(kind)s
  AND EXISTS (SELECT 1 FROM delta_leader WHERE name = 'default' AND term = %(term)s
              AND actor_id = %(actor)s AND expires_at > now())
RETURNING kind
"""

FAIL_INFORMER: LiteralString = """
UPDATE delta_informer
SET last_error = %(error)s, failures = failures + 1, last_finished_at = now(),
    objects = objects + %(objects)s,
    next_run_at = now() + make_interval(secs => %(next_in)s)
WHERE kind = %(kind)s
"""
