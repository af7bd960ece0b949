"""What the leader reads of the whole cluster for metrics (leader/gauges.py), as it travels
on the leader's heartbeat frames."""

from __future__ import annotations

import msgspec


class ClusterGauges(msgspec.Struct, array_like=True, frozen=True):
    """Resources by (kind, stored state, count), paused namespaces, and the waiting works
    and jobs of each limited kind."""

    resources: list[tuple[str, str, int]]
    paused: list[str]
    limited_waiting: list[tuple[str, int]]
