"""Quick start: mirror a local customer file into PostgreSQL and keep a report per customer.

The "external system" is `customers.jsonl` beside this file: one customer per line. The
controller renders a report for each new or changed customer into `reports/`, and when a
customer's line disappears its `finalize` removes the report.

Run it from the repository root:

    delta-actors supervise --app examples.quickstart.app:app

then edit customers.jsonl and watch reports/ follow. How soon a change shows:

- The informer runs every 10 seconds and lists the lines whose `updated_at` is newer
  than its cursor: the newest `updated_at` it has seen. So to change a customer, edit
  the line and set its `updated_at` later than every other line's (a new line too).
  A change with an older `updated_at` is not seen by those runs; and since `compare`
  keeps the newer copy, an edit that keeps the same `updated_at` is never stored.
- Once a minute the informer lists every line (a full listing): a changed line with an
  older `updated_at` shows then, and a customer whose line is gone is deleted
  (tombstones), which runs `finalize`.
- Not willing to wait: `delta-actors inform customer --full` runs a full listing now.

$DELTA_EXAMPLE_OUT, if set, names another folder for the reports, and
$DELTA_EXAMPLE_SOURCE another customer file (the tests use them).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import delta_actors as delta

HERE = Path(__file__).resolve().parent
SOURCE = Path(os.environ.get("DELTA_EXAMPLE_SOURCE", HERE / "customers.jsonl"))
REPORTS = Path(os.environ.get("DELTA_EXAMPLE_OUT", HERE / "reports"))


class Customer(delta.Object, kind="customer"):
    """A customer as the external system has it."""

    email: str
    name: str
    plan: str
    orders: list[float]
    updated_at: datetime

    def id(self) -> str:
        return self.email

    def compare(self, stored: Customer) -> int:
        # Newer wins; an older copy (a replay, a lagging replica) is stale.
        return (self.updated_at > stored.updated_at) - (self.updated_at < stored.updated_at)

    def created_at(self) -> datetime:
        return self.updated_at


class CustomerController(delta.Controller[Customer]):
    """Lists customers from the file, renders one report per customer, removes it when
    the customer is deleted."""

    inform_interval = 10.0
    full_interval = 60.0  # a full listing a minute lets tombstones see removed lines
    tombstones = True

    async def inform(self, options: delta.InformOptions) -> AsyncIterator[Customer]:
        text = await asyncio.to_thread(SOURCE.read_text)  # file I/O off the event loop
        for line in text.splitlines():
            if not line.strip():
                continue
            raw = json.loads(line)
            customer = Customer(
                email=raw["email"],
                name=raw["name"],
                plan=raw["plan"],
                orders=[float(x) for x in raw["orders"]],
                updated_at=datetime.fromisoformat(raw["updated_at"]).astimezone(UTC),
            )
            # A full listing yields everything (so tombstones can see what is gone).
            if options.after is None or customer.updated_at > options.after:
                yield customer

    def work(self, resource: delta.Resource[Customer]) -> None:
        # A plain def: blocking file I/O runs off the event loop.
        customer = resource.object
        total = sum(customer.orders)
        tier = "gold" if total >= 1000 else "silver" if total >= 100 else "bronze"
        report = {
            "customer": customer.email,
            "name": customer.name,
            "plan": customer.plan,
            "orders": len(customer.orders),
            "total": round(total, 2),
            "tier": tier,
            "generation": resource.generation,
            "rendered_at": datetime.now(UTC).isoformat(),
        }
        REPORTS.mkdir(exist_ok=True)
        target = report_path(customer)
        tmp = target.with_suffix(".tmp")
        tmp.write_text(json.dumps(report, indent=2))
        tmp.replace(target)

    def finalize(self, resource: delta.Resource[Customer]) -> None:
        # The customer is gone (its line was removed, or `client.delete` was called):
        # undo what work() did. Once this returns, the resource is `deleted`.
        report_path(resource.object).unlink(missing_ok=True)


def report_path(customer: Customer) -> Path:
    """Where the report of `customer` lives: a name that does not leak the email."""
    return REPORTS / f"{hashlib.sha256(customer.email.encode()).hexdigest()[:16]}.json"


app = delta.App(
    controllers=[CustomerController()],
    namespaces={"default": delta.Namespace(max_workers=8)},
)
