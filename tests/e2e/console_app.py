"""The app behind the console's end-to-end test (tests/e2e/test_console.py).

Customers (namespace `default`) fail for good while their key is listed in
`e2e_console_broken` with an error, with that error; a row without an error holds their
work while `held` is true, then it succeeds (the test "fixes the upstream" and lets the
works finish only once the page shows them unfinished, so that the page is seen catching
up). Invoices (namespace `billing`) record each run in `e2e_run`, so that the test can see
whether anything of a paused namespace was claimed. Accounts have an informer that lists
nothing (no account is ever stored, so its full listings delete nothing): the informer
the console shows and runs.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator

import psycopg

import delta_actors as delta
from tests.e2e.apps import _record

BROKEN_TABLE = """
CREATE TABLE IF NOT EXISTS e2e_console_broken (
    key text PRIMARY KEY, error text, held boolean NOT NULL DEFAULT false
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


HOLD_TIMEOUT = 50.0  # seconds a held work waits at most (under the controller's timeout)


class Account(delta.Object, kind="account"):
    key: str

    def id(self) -> str:
        return self.key


def _upstream(key: str) -> tuple[str | None, bool]:
    with psycopg.connect(os.environ["DELTA_DATABASE_URL"], autocommit=True) as conn:
        row = conn.execute(
            "SELECT error, held FROM e2e_console_broken WHERE key = %s", (key,)
        ).fetchone()
    return (row[0], bool(row[1])) if row else (None, False)


class CustomerController(delta.Controller[Customer]):
    def work(self, resource: delta.Resource[Customer]) -> None:
        error, held = _upstream(resource.object_id)
        if error is not None:
            raise delta.PermanentError(error)
        deadline = time.monotonic() + HOLD_TIMEOUT
        while held and time.monotonic() < deadline:
            time.sleep(0.1)
            _, held = _upstream(resource.object_id)


class AccountController(delta.Controller[Account]):
    async def work(self, resource: delta.Resource[Account]) -> None:
        return None

    async def inform(self, options: delta.InformOptions) -> AsyncIterator[Account]:
        for _ in ():
            yield Account(key="never")


class InvoiceController(delta.Controller[Invoice]):
    namespace = "billing"

    async def work(self, resource: delta.Resource[Invoice]) -> None:
        await _record(resource, 0.0)  # type: ignore[arg-type]


app = delta.App(
    controllers=[CustomerController(), InvoiceController(), AccountController()],
    namespaces={
        "default": delta.Namespace(max_workers=10),
        "billing": delta.Namespace(max_workers=5),
    },
)
