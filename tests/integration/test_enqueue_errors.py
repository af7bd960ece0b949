"""Bad input to the client: a clear delta error naming the value, and nothing written."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

import psycopg
import pytest

import delta_actors as delta
from delta_actors.queue.insert import COPY_THRESHOLD
from tests.integration.job_table import job_count


class Note(delta.Job, kind="note"):
    n: int = 0


class Opaque:
    """A value msgspec cannot encode."""


class Loose(delta.Job, kind="loose"):
    value: object = None


async def _noop(job: object) -> None:
    return None


BAD_OPTIONS = [
    pytest.param(
        {"namespace": "Billing"}, delta.ConfigError, "invalid namespace 'Billing'", id="uppercase"
    ),
    pytest.param(
        {"namespace": "n" * 64}, delta.ConfigError, "'n{64}': it is 64 characters long",
        id="too-long",
    ),
    pytest.param(
        {"namespace": "x'; drop table delta_job; --"}, delta.ConfigError,
        re.escape("invalid namespace \"x'; drop table delta_job; --\""), id="sql-metacharacters",
    ),
    pytest.param({"namespace": ""}, delta.ConfigError, "invalid namespace ''", id="empty"),
    pytest.param(
        {"priority": 0}, delta.ConfigError, r"priority must be 1 .* to 4 .*, got 0", id="priority-0"
    ),
    pytest.param(
        {"priority": 5}, delta.ConfigError, r"priority must be 1 .* to 4 .*, got 5", id="priority-5"
    ),
    pytest.param({"priority": "1"}, delta.ConfigError, "got '1'", id="priority-str"),
    pytest.param(
        {"max_attempts": 0}, delta.ConfigError, r"max_attempts must be 1\.\.32767, got 0",
        id="attempts-0",
    ),
    pytest.param({"max_attempts": 40_000}, delta.ConfigError, "got 40000", id="attempts-over"),
    pytest.param(
        {"scheduled_at": datetime(2030, 1, 2, 3, 4)}, delta.ConfigError,
        "scheduled_at 2030-01-02T03:04:00 has no time zone", id="naive-scheduled-at",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("options", "error", "needle"), BAD_OPTIONS)
def test_bad_enqueue_options_raise_a_config_error_and_write_nothing(dsn, options, error, needle):
    """enqueue, enqueue_many and enqueue_tx refuse the option before writing anything."""
    with delta.Client.connect(dsn) as client:
        with pytest.raises(error, match=needle):
            client.enqueue(Note(), **options)
        with pytest.raises(error, match=needle):
            client.enqueue_many([Note(n=i) for i in range(3)], **options)
        with psycopg.connect(dsn) as conn:
            with pytest.raises(error, match=needle):
                client.enqueue_tx(conn, Note(), **options)
            conn.commit()
    assert job_count(dsn) == 0


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        (delta.JobSpec(Note(), namespace="Nope"), "invalid namespace 'Nope'"),
        (delta.JobSpec(Note(), priority=9), "got 9"),
        (delta.JobSpec(Note(), max_attempts=-1), "got -1"),
        (delta.JobSpec(Note(), scheduled_at=datetime(2031, 5, 6)), "2031-05-06T00:00:00 has no"),
    ],
)
@pytest.mark.parametrize("size", [5, COPY_THRESHOLD + 5], ids=["insert-path", "copy-path"])
def test_one_bad_job_spec_fails_the_whole_batch(dsn, spec, needle, size):
    """A bad JobSpec in the middle of a batch: ConfigError, and not even earlier jobs stored."""
    jobs: list[delta.Job | delta.JobSpec] = [Note(n=i) for i in range(size)]
    jobs[size // 2] = spec
    with delta.Client.connect(dsn) as client, pytest.raises(delta.ConfigError, match=needle):
        client.enqueue_many(jobs)
    assert job_count(dsn) == 0


@pytest.mark.parametrize(
    ("value", "needle"),
    [(Opaque(), "Opaque"), ({"nested": [Opaque()]}, "Opaque"), (b"\xff" * 3, None)],
    ids=["custom-class", "nested-custom-class", "bytes-encode-fine"],
)
def test_a_job_that_does_not_encode_raises_encode_error_and_writes_nothing(dsn, value, needle):
    """A field holding a value msgspec cannot encode: EncodeError naming kind, position, type.

    The first Loose encodes: the failing one is the second of its type in the batch."""
    jobs = [Loose(value=0), Note(n=2), Loose(value=value)]
    with delta.Client.connect(dsn) as client:
        if needle is None:  # the control: an encodable value goes in
            client.enqueue_many(jobs)
            assert job_count(dsn) == 3
            return
        with pytest.raises(delta.EncodeError) as caught:
            client.enqueue_many(jobs)
    message = str(caught.value)
    assert "job 2 of kind 'loose' does not encode" in message
    assert needle in message
    assert isinstance(caught.value, delta.DeltaError)
    assert job_count(dsn) == 0


def test_a_job_holding_a_set_is_stored_as_a_list(dsn):
    """A set in an `object` field encodes (as a JSON array): no error, nothing lost."""
    with delta.Client.connect(dsn) as client:
        job = client.enqueue(Loose(value={3}))
        row = client.get_job(job.id)
    assert row is not None and row.args == b'{"value":[3]}'


def test_unknown_kind_and_namespace_are_refused_when_the_client_has_an_app(dsn):
    """With an app, a kind it lacks and a namespace it lacks: errors that list what it has."""
    app = delta.App(
        jobs={Note: _noop},
        namespaces={"default": delta.Namespace(), "billing": delta.Namespace()},
    )
    with delta.Client.connect(dsn, app=app) as client:
        with pytest.raises(
            delta.UnknownKindError, match=r"unknown job kind 'loose' \(registered: note\)"
        ):
            client.enqueue(Loose())
        with pytest.raises(delta.UnknownKindError, match="'loose'"):
            client.enqueue_many([Note(), Loose()])
        with pytest.raises(
            delta.UnknownNamespaceError,
            match=r"unknown namespace 'elsewhere' \(configured: billing, default\)",
        ):
            client.enqueue(Note(), namespace="elsewhere")
        with pytest.raises(delta.UnknownNamespaceError, match="'elsewhere'"):
            client.enqueue_many([Note(), delta.JobSpec(Note(), namespace="elsewhere")])
        assert job_count(dsn) == 0
        client.enqueue(Note(), namespace="billing")
    assert issubclass(delta.UnknownKindError, delta.ConfigError)
    assert issubclass(delta.UnknownNamespaceError, delta.ConfigError)
    assert job_count(dsn) == 1


def test_items_that_are_not_jobs_are_refused(dsn):
    """enqueue_many of something that is not a delta.Job: ConfigError naming its position."""

    class Base(delta.Job):
        pass

    with delta.Client.connect(dsn) as client:
        with pytest.raises(delta.ConfigError, match=r"item 1 is dict, not a delta\.Job"):
            client.enqueue_many([Note(), {"kind": "note"}])  # type: ignore[list-item]
        with pytest.raises(delta.ConfigError, match="Base has no kind"):
            client.enqueue(Base())
    assert job_count(dsn) == 0


# ---------------------------------------------------------------- connecting


@pytest.mark.parametrize(
    "template",
    [
        "postgresql://alice:{password}@/delta?host={folder}&port=9",
        "host={folder} port=9 user=alice password={password} dbname=delta",
        "host={folder} port=9 user=alice password='{password} x' dbname=delta",
    ],
    ids=["url", "key-value", "quoted-key-value"],
)
def test_connect_to_an_unreachable_server_raises_database_error_without_the_password(
    tmp_path, template
):
    """No server on that socket: DatabaseError naming the socket; the password is redacted."""
    password = "Hunter2-s3cret"  # noqa: S105 (a fake one, to check redaction)
    dsn = template.format(folder=tmp_path, password=password)
    with pytest.raises(delta.DatabaseError) as caught:
        delta.Client.connect(dsn)
    message = str(caught.value)
    assert "connect client: cannot use PostgreSQL at" in message
    assert str(tmp_path) in message
    assert ".s.PGSQL.9" in message
    assert password not in message
    assert "***" in message
    assert not isinstance(caught.value, delta.SchemaError)


async def test_async_connect_to_an_unreachable_server_raises_database_error(tmp_path):
    """AsyncClient.connect: the same DatabaseError, the same redaction."""
    with pytest.raises(delta.DatabaseError) as caught:
        await delta.AsyncClient.connect(f"postgresql://alice:pw-9911@/d?host={tmp_path}&port=9")
    assert str(tmp_path) in str(caught.value)
    assert "pw-9911" not in str(caught.value)


@pytest.mark.parametrize(
    "dsn",
    ["not a dsn password=pw-7731", "postgresql://alice:pw-7731@/delta?host=/tmp&bogus=1"],
    ids=["not-key-value", "unknown-parameter"],
)
def test_connect_with_a_malformed_dsn_raises_a_delta_error_without_the_password(dsn):
    """A DSN that does not parse is refused with a delta error, not a raw psycopg one."""
    with pytest.raises(delta.DeltaError) as caught:
        delta.Client.connect(dsn)
    assert "pw-7731" not in str(caught.value)


def test_connect_to_an_unmigrated_database_raises_schema_error_naming_migrate(empty_dsn):
    """An empty database: SchemaError (a DatabaseError) that says to run delta-actors migrate."""
    with pytest.raises(delta.SchemaError) as caught:
        delta.Client.connect(empty_dsn)
    assert "schema is at version 0" in str(caught.value)
    assert "run `delta-actors migrate`" in str(caught.value)
    assert isinstance(caught.value, delta.DatabaseError)
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT to_regclass('delta_job')").fetchone() == (None,)


async def test_worker_start_on_an_unmigrated_database_raises_schema_error(empty_dsn):
    """Worker.start on an empty database: SchemaError naming the fix, and no actor left over."""
    worker = delta.Worker(delta.App(jobs={Note: _noop}), empty_dsn)
    try:
        with pytest.raises(delta.SchemaError, match="run `delta-actors migrate`"):
            await worker.start()
    finally:
        await worker.stop()


def test_connect_to_a_database_behind_or_ahead_names_the_versions(dsn):
    """A schema one version behind says to migrate; one ahead says to upgrade delta_actors."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        newest = conn.execute("SELECT max(version) FROM delta_migration").fetchone()
        assert newest is not None
        conn.execute("DELETE FROM delta_migration WHERE version = %s", newest)
        with pytest.raises(delta.SchemaError, match=f"version {newest[0] - 1}.*needs {newest[0]}"):
            delta.Client.connect(dsn)
        conn.execute(
            "INSERT INTO delta_migration (version, name) VALUES (%s, 'x'), (%s, 'future')",
            (newest[0], newest[0] + 1),
        )
        with pytest.raises(delta.SchemaError, match=r"newer than this delta_actors.*upgrade"):
            delta.Client.connect(dsn)


def test_scheduled_at_with_a_time_zone_is_accepted(dsn):
    """The aware twin of the naive datetime above is stored as the same instant."""
    with delta.Client.connect(dsn) as client:
        aware = datetime(2030, 1, 2, 3, 4).astimezone()
        job = client.enqueue(Note(), scheduled_at=aware)
        row = client.get_job(job.id)
    assert row is not None
    assert row.state is delta.JobState.SCHEDULED
    assert row.scheduled_at - aware == timedelta(0)


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO delta_job (kind, namespace, args, max_attempts) "
        "VALUES ('Note', 'default', '', 1)",
        "INSERT INTO delta_job (kind, namespace, args, max_attempts) VALUES ('note', 'a b', '', 1)",
        "UPDATE delta_job SET namespace = '-lead'",
        "UPDATE delta_job SET kind = repeat('k', 64)",
        "INSERT INTO delta_resource (kind, object_id, namespace, object, hash, max_attempts)"
        " VALUES ('gizmo', 'g1', 'Default', '', '', 1)",
        "UPDATE delta_resource SET kind = 'gizmo!'",
    ],
    ids=["job-kind", "job-queue", "set-queue", "set-long-kind", "resource-namespace",
         "set-resource-kind"],
)  # fmt: skip
def test_the_database_refuses_bad_names_from_any_writer(dsn, statement):
    """Kinds, queues and namespaces keep the client's naming rule in the database itself
    (the delta_name domain), for writers that bypass the client."""
    with delta.Client.connect(dsn) as client:
        client.enqueue(Note())
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO delta_resource (kind, object_id, namespace, object, hash, max_attempts)"
            " VALUES ('gizmo', 'g0', 'default', '', '', 1)"
        )
        with pytest.raises(psycopg.errors.CheckViolation, match="domain delta_name"):
            conn.execute(statement)
        assert conn.execute("SELECT kind, namespace FROM delta_job").fetchall() == [
            ("note", "default")
        ]
