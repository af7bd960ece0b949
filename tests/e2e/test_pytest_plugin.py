"""The pytest plugin works in a user's project: installed, pytest loads it (`pytest11`),
under pytest-xdist too, and its fixtures give each test a database of its own."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs" / "testing.md"

# Besides the guide's example: each test has a database of its own, and the async
# client serves any event loop.
MORE_TESTS = """
import asyncio

import pytest

import delta_actors as delta
from myapp.orders import Order, SendInvoice, app


@pytest.mark.parametrize("n", range(4))
def test_each_test_has_a_database_of_its_own(delta_client, n):
    runner = delta.testing.Runner(app, delta_client)
    delta_client.inform(Order(key=f"o{n}", total=10))
    results = runner.run_until_idle()
    assert results.synced == [f"order/o{n}"]
    assert results.completed == [SendInvoice(order=f"o{n}")]
    assert [r.object_id for r in delta_client.list(Order).items] == [f"o{n}"]


def test_the_async_client_serves_any_event_loop(delta_async_client):
    async def inform(key):
        return await delta_async_client.inform(Order(key=key, total=1))

    assert asyncio.run(inform("a")).outcome is delta.InformOutcome.CREATED
    assert asyncio.run(inform("b")).outcome is delta.InformOutcome.CREATED
"""


def guide_files() -> dict[str, str]:
    """The files of docs/testing.md's example: each block opens with `# <path>`."""
    blocks = re.findall(r"```python\n# (\S+\.py)\n(.*?)```", DOCS.read_text(), re.DOTALL)
    return dict(blocks)


# Only for the check below: where each worker's databases were made.
RECORD_PREFIXES = """
import os
from pathlib import Path

import pytest


@pytest.fixture(autouse=True, scope="session")
def _record_prefix(delta_databases):
    (Path(os.environ["PREFIXES"]) / delta_databases.prefix).touch()
"""


@pytest.mark.slow
def test_a_user_project_gets_the_fixtures_and_runner_from_the_installed_plugin(
    tmp_path: Path, delta_postgres
):
    """docs/testing.md's example as a project of its own (none of our conftest), on two
    xdist workers, warnings as errors: every test passes, none leaves a database behind."""
    files = guide_files()
    assert sorted(files) == ["myapp/orders.py", "tests/conftest.py", "tests/test_orders.py"]
    files["tests/test_more.py"] = MORE_TESTS
    files["tests/conftest.py"] += RECORD_PREFIXES
    files["myapp/__init__.py"] = ""
    for path, code in files.items():
        (tmp_path / path).parent.mkdir(exist_ok=True)
        (tmp_path / path).write_text(code)
    prefixes = tmp_path / "prefixes"
    prefixes.mkdir()
    (tmp_path / "pytest.ini").write_text(
        textwrap.dedent("""\
            [pytest]
            pythonpath = .
            addopts = --strict-markers
            filterwarnings = error
        """)
    )
    # The server our own session runs on, so that no second cluster starts.
    env = {**os.environ, "DELTA_TEST_DSN": delta_postgres.admin_dsn, "PREFIXES": str(prefixes)}
    env.pop("PYTEST_XDIST_WORKER", None)
    env.pop("PYTEST_ADDOPTS", None)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2",
         "tests"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "7 passed" in result.stdout
    made = sorted(path.name for path in prefixes.iterdir())
    assert len(made) == 2 and all("_gw" in prefix for prefix in made)  # one per worker
    with delta_postgres.admin() as admin:
        names = [row[0] for row in admin.execute("SELECT datname FROM pg_database")]
    assert [name for name in names if name.startswith(tuple(made))] == []
