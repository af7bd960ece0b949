"""Quick start: mirror a local customer file into PostgreSQL and keep a report per customer.

The "external system" is `customers.jsonl` beside this file: one customer per line. The
informer lists it every 10 seconds (only lines changed since the last run, by their
`updated_at`; everything once a minute), the controller renders a report for each new
or changed customer into `reports/`, and a customer whose line disappears is marked
deleted at the next full listing (tombstones).

Run it from the repository root:

    delta-actors supervise --app examples.quickstart.app:app

then edit customers.jsonl (change a name, bump its updated_at, add or remove a line)
and watch reports/ follow within seconds.

$DELTA_EXAMPLE_OUT, if set, names another folder for the reports (the tests use it).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import delta_actors as delta

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "customers.jsonl"
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
    """Lists customers from the file and renders one report per customer."""

    inform_interval = 10.0
    full_interval = 60.0  # a full listing a minute lets tombstones see removed lines
    tombstones = True

    async def inform(self, options: delta.InformOptions) -> AsyncIterator[Customer]:
        for line in SOURCE.read_text().splitlines():
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
        name = hashlib.sha256(customer.email.encode()).hexdigest()[:16]
        target = REPORTS / f"{name}.json"
        tmp = target.with_suffix(".tmp")
        tmp.write_text(json.dumps(report, indent=2))
        tmp.replace(target)


app = delta.App(
    controllers=[CustomerController()],
    namespaces={"default": delta.Namespace(max_workers=8)},
)
