"""Row types name their statements' columns: what the server returns, field by field."""

from __future__ import annotations

import msgspec
import psycopg

from delta_actors.db import actor_sql, job_sql, resource_sql


def described(conn: psycopg.Connection, statement: str, params: object) -> list[str]:
    cur = conn.execute(statement, params)  # type: ignore[arg-type]
    assert cur.description is not None
    return [column.name for column in cur.description]


def fields(row_type: type[msgspec.Struct]) -> list[str]:
    return list(row_type.__struct_fields__)


def test_resource_rows_are_named_as_the_server_names_their_columns(conn):
    assert described(conn, resource_sql.GET_RESOURCE, ("k", "id")) == fields(resource_sql.StoredRow)
    stored = described(
        conn, resource_sql.SELECT_STORED_RESOURCES,
        {"kinds": ["k"], "object_ids": ["id"], "compare_kinds": []},
    )  # fmt: skip
    assert stored == fields(resource_sql.InformedRow)


def test_claim_and_insert_rows_are_named_as_the_server_names_their_columns(conn):
    assert described(conn, actor_sql.SELECT_CLAIMS_OF_ACTORS, ([1], 10)) == fields(
        actor_sql.ClaimOfActor
    )
    live = described(conn, job_sql.SELECT_LIVE_UNIQUE_JOBS, (["k"], ["key"]))
    assert live == fields(job_sql.InsertedJob)[: len(live)]
