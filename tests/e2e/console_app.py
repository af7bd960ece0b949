"""The app behind the console's end-to-end test (tests/e2e/test_console.py).

Customers (namespace `default`) fail for good while their key is listed in
`e2e_console_broken` with an error, with that error; a row without an error makes their
work take its `seconds` and succeed (the test "fixes the upstream", slowly, so that the
page can be seen catching up). Invoices (namespace `billing`) record each run in
`e2e_run`, so that the test can see whether anything of a paused namespace was claimed.
"""

from __future__ import annotations

import os
import time

import psycopg

import delta_actors as delta
from tests.e2e.apps import _record

BROKEN_TABLE = """
CREATE TABLE IF NOT EXISTS e2e_console_broken (
    key text PRIMARY KEY, error text, seconds float8 NOT NULL DEFAULT 0
)
"""


class Customer(delta.Object, kind="customer"):
    key: str
    name: str = ""

    def id(self) -> str:
        return self.key


class Invoice(delta.Object, kind="invoice"):
    key: str

    def id(self) -> str:
        return self.key


def _upstream(key: str) -> tuple[str | None, float]:
    with psycopg.connect(os.environ["DELTA_DATABASE_URL"], autocommit=True) as conn:
        row = conn.execute(
            "SELECT error, seconds FROM e2e_console_broken WHERE key = %s", (key,)
        ).fetchone()
    return (row[0], float(row[1])) if row else (None, 0.0)


class CustomerController(delta.Controller[Customer]):
    def work(self, resource: delta.Resource[Customer]) -> None:
        error, seconds = _upstream(resource.object_id)
        if error is not None:
            raise delta.PermanentError(error)
        time.sleep(seconds)


class InvoiceController(delta.Controller[Invoice]):
    namespace = "billing"

    async def work(self, resource: delta.Resource[Invoice]) -> None:
        await _record(resource, 0.0)  # type: ignore[arg-type]


app = delta.App(
    controllers=[CustomerController(), InvoiceController()],
    namespaces={
        "default": delta.Namespace(max_workers=10),
        "billing": delta.Namespace(max_workers=5),
    },
)
