"""`delta.testing`: test a delta_actors app with pytest, against a real PostgreSQL.

- `Runner` / `AsyncRunner` (testing/runner.py): run an app's works, jobs and informers
  inline, through the code an actor runs, with time under the test's control
  (`advance(seconds)`); `Results` (testing/results.py) says what ran and how it ended.
- The pytest plugin (testing/plugin.py, registered through the `pytest11` entry point,
  so `pip install 'delta-actors[test]'` is enough): `delta_dsn`, `delta_client`,
  `delta_async_client` on a migrated database of each test's own.
- `DatabaseServer`, `TemplateDatabases` (testing/databases.py): what the fixtures are
  made of, for a harness of one's own.

Importing this module does not import pytest; docs/testing.md is the guide.
"""

from __future__ import annotations

from delta_actors.testing.databases import DatabaseServer, TemplateDatabases
from delta_actors.testing.results import InformerRun, JobRun, Results, WorkRun
from delta_actors.testing.runner import AsyncRunner, NotIdleError, Runner

__all__ = [
    "AsyncRunner",
    "DatabaseServer",
    "InformerRun",
    "JobRun",
    "NotIdleError",
    "Results",
    "Runner",
    "TemplateDatabases",
    "WorkRun",
]
