"""`delta-actors status` and `delta-actors inspect`: tables, JSON, exit codes, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import delta_actors as delta
from delta_actors.ops.cli import main
from tests.integration.test_status import Bad, Good, work_everything


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> CliRunner:
    """A runner whose environment names no database and an empty embedded data folder."""
    monkeypatch.delenv("DELTA_DATABASE_URL", raising=False)
    monkeypatch.setenv("DELTA_DATA_DIR", str(tmp_path / "no-embedded-db"))
    return CliRunner()


async def test_status_prints_tables_and_json(dsn, cli):
    """The same state as readable sections and as JSON that scripts can parse."""
    await work_everything(dsn)
    result = cli.invoke(main, ["status", "--dsn", dsn])
    assert result.exit_code == 0, result.output
    for section in ("schema version", "leader: none", "ACTORS", "RESOURCES", "QUEUES"):
        assert section in result.output
    assert "cannot reach the API for b1" in result.output

    as_json = cli.invoke(main, ["status", "--dsn", dsn, "--json"])
    assert as_json.exit_code == 0, as_json.output
    status = json.loads(as_json.output)
    assert status["leader"] is None
    assert {(r["kind"], r["state"], r["count"]) for r in status["resources"]} == {
        ("bad", "degraded", 1), ("good", "synced", 3), ("parked", "scheduled", 2),
    }  # fmt: skip
    assert {q["namespace"] for q in status["queues"]} == {"default", "parked"}
    assert {f["kind"] for f in status["failures"]} == {"bad", "mail"}


def test_status_reads_the_dsn_from_the_environment(dsn, cli):
    """$DELTA_DATABASE_URL stands in for --dsn."""
    result = cli.invoke(main, ["status", "--json"], env={"DELTA_DATABASE_URL": dsn})
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["actors"] == []


def test_status_without_any_database_names_the_three_ways(cli):
    """No --dsn, no environment, no running embedded database: a usage error naming each."""
    result = cli.invoke(main, ["status"])
    assert result.exit_code == 2
    assert "--dsn" in result.output and "DELTA_DATABASE_URL" in result.output
    assert "delta-actors db start" in result.output


def test_status_of_an_unmigrated_database_names_migrate(empty_dsn, cli):
    """Exit 2 and the command that fixes it, no traceback."""
    result = cli.invoke(main, ["status", "--dsn", empty_dsn])
    assert result.exit_code == 2
    assert "delta-actors migrate" in result.output
    assert "Traceback" not in result.output


async def test_inspect_prints_a_resource_as_text_and_json(dsn, cli):
    """Text for people, JSON (with the object as JSON) for scripts."""
    await work_everything(dsn)
    result = cli.invoke(main, ["inspect", "bad", "b1", "--dsn", dsn])
    assert result.exit_code == 0, result.output
    assert "state:      degraded" in result.output
    assert "errors (2, newest last):" in result.output

    as_json = cli.invoke(main, ["inspect", "good", "g0", "--dsn", dsn, "--json"])
    assert as_json.exit_code == 0, as_json.output
    detail = json.loads(as_json.output)
    assert (detail["kind"], detail["object_id"], detail["state"]) == ("good", "g0", "synced")
    assert detail["object"] == {"key": "g0", "size": 0}
    assert detail["errors"] == [] and detail["generation"] == 1


def test_inspect_of_what_is_not_there_exits_1_naming_what_is(dsn, cli):
    """Unknown id or kind: exit 1 and a message; an invalid kind name: exit 2."""
    with delta.Client.connect(dsn) as client:
        client.inform(Good(key="g1"))
        client.inform(Bad(key="b1"))
    missing = cli.invoke(main, ["inspect", "good", "nope", "--dsn", dsn])
    assert missing.exit_code == 1
    assert "no good resource with id 'nope'" in missing.output
    unknown = cli.invoke(main, ["inspect", "user", "u1", "--dsn", dsn])
    assert unknown.exit_code == 1
    assert "no resources of kind 'user' (kinds stored: bad, good)" in unknown.output
    invalid = cli.invoke(main, ["inspect", "User", "u1", "--dsn", dsn])
    assert invalid.exit_code == 2
    assert "invalid kind 'User'" in invalid.output
