"""Statements of the actor table (`delta_actor`): register, heartbeat, unregister, and
rescue's view of dead actors and their claims.
"""

from __future__ import annotations

from typing import LiteralString

import msgspec


class ClaimOfActor(msgspec.Struct, frozen=True):
    """A row of SELECT_CLAIMS_OF_ACTORS: a running job an actor holds."""

    job_id: int
    actor: int  # the actor that holds it
    attempt: int
    max_attempts: int
    resource_id: int | None  # None: a plain job
    generation: int | None  # the resource's generation, for a resource work
    deleting: bool  # the resource is marked for deletion: its work runs finalize


REGISTER_ACTOR: LiteralString = """
INSERT INTO delta_actor (host, pid, namespace, role) VALUES (%s, %s, %s, %s) RETURNING id
"""

# Touches no row when rescue declared the actor dead meanwhile. `health`: see health.py.
HEARTBEAT_ACTOR: LiteralString = """
UPDATE delta_actor SET heartbeat_at = now(), health = %(health)s::jsonb WHERE id = %(actor)s
"""

UNREGISTER_ACTOR: LiteralString = "DELETE FROM delta_actor WHERE id = %s"

# Actors whose heartbeat is older than the TTL: dead for rescue's purposes.
SELECT_EXPIRED_ACTORS: LiteralString = """
SELECT id FROM delta_actor
WHERE heartbeat_at < now() - make_interval(secs => %(ttl)s)
LIMIT %(limit)s
"""

# Claims held by actors that have no row at all (unregistered, or rescued before, with
# claims left over): dead too. This reads every entry of the running index, and while a
# transaction holds an old snapshot that is every job claimed since (vacuum may remove
# none), so rescue asks it far less often than the above (leader/maintenance.py).
SELECT_ORPHANED_CLAIMERS: LiteralString = """
SELECT DISTINCT j.claimed_by FROM delta_job AS j
WHERE j.state = 'running'
  AND NOT EXISTS (SELECT 1 FROM delta_actor AS a WHERE a.id = j.claimed_by)
LIMIT %(limit)s
"""

# Deleting the row first tells a paused actor that resumes that it was declared dead.
DELETE_ACTORS: LiteralString = "DELETE FROM delta_actor WHERE id = ANY(%s)"

# The claims of any number of actors, in one statement (rescue's round trips do not
# grow with the number of dead actors). In the order of ClaimOfActor's fields.
SELECT_CLAIMS_OF_ACTORS: LiteralString = """
SELECT j.id AS job_id, j.claimed_by AS actor, j.attempt, j.max_attempts, j.resource_id,
       r.generation, r.deletion_requested_at IS NOT NULL AS deleting
FROM delta_job AS j
LEFT JOIN delta_resource AS r ON r.id = j.resource_id
WHERE j.state = 'running' AND j.claimed_by = ANY(%s::bigint[])
ORDER BY j.id
LIMIT %s
"""
