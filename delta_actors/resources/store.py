"""Informing: storing objects as resources, detecting changes, queueing their work.

One inform of a batch, in the caller's connection (and transaction, for `inform_tx`):

1. Read what is stored for the batch's identities (SELECT_STORED_RESOURCES).
2. Decide per object, in Python: not stored -> created; `compare(stored)` > 0, or (without
   compare) a different content hash -> updated; == 0 or same hash -> unchanged; < 0 ->
   stale, not stored.
3. Write the created and updated ones in one statement (WRITE_RESOURCES), fenced on the
   generation read in 1 and folding each into the resource's one queued work, woken by
   one NOTIFY per namespace at commit. An update of a deleting or deleted resource
   revives it: its deletion mark is cleared, and `work` runs again.
4. An object whose identity changed between 1 and 3 (a concurrent inform) is decided
   again from 1, this time reading with FOR UPDATE so that the second round cannot lose
   (a new identity can lose once more, to a concurrent first insert); after
   MAX_ROUNDS the inform fails rather than spin.

A batch of JIT_OFF_FROM objects or more runs its statements with JIT off (two statements
more: the setting turned off, then given back).

Unchanged objects cost one read and write nothing. Within one batch the last object of
an identity wins; earlier ones report its outcome when equal to it, else stale.

The steps are a generator that yields statements and receives their rows, so the sync
and async clients drive the same code.
"""

from __future__ import annotations

import hashlib
from collections.abc import Generator, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from delta_actors import tracing
from delta_actors.config import DEFAULT_NAMESPACE
from delta_actors.db import resource_sql
from delta_actors.db.connection import Rows, Statement
from delta_actors.db.resource_sql import InformedRow, WrittenRow
from delta_actors.errors import ConfigError, DatabaseError, EncodeError
from delta_actors.model.kinds import kind_of
from delta_actors.model.names import validate_name
from delta_actors.model.object import Object, has_compare, id_of
from delta_actors.model.resource import InformOutcome, InformResult

if TYPE_CHECKING:
    from delta_actors.app import App

MAX_ROUNDS = 8
# PostgreSQL compiles a statement with JIT once its estimated cost passes
# `jit_above_cost` (100,000 by default): some 80 ms a statement on a 2-core machine, for
# a read that then runs in 12. The read of a batch of 5,000 new identities crossed it at
# 600,000 resources (12 -> 94 ms), of 5,000 stored ones at any size (31 -> 110 ms). So
# a batch this large runs with JIT off, set for the inform's statements alone (SET
# LOCAL, given back after: an inform_many_tx leaves the caller's transaction as it found
# it). At a million resources, vacuumed, the read of 1,000 is estimated at 12,600 and of
# 5,000 at 63,000 (past 100,000 while the table grew): a smaller batch is spared the two
# statements.
JIT_OFF_FROM = 1_000
OBJECT_ID_MAX_LENGTH = 1024
DEFAULT_MAX_ATTEMPTS = 10
_encoder = msgspec.json.Encoder(order="deterministic")
_json = msgspec.json.Encoder()
_decoders: dict[type, msgspec.json.Decoder[Any]] = {}


@dataclass(frozen=True, slots=True)
class InformParams:
    """The options of one inform call."""

    namespace: str | None = None
    tags: tuple[str, ...] = ()
    metadata: dict[str, Any] | None = None
    max_attempts: int | None = None
    listed: bool = False  # written by an informer (for `tombstones = "listed"`)


@dataclass(slots=True)
class _Item:
    obj: Object
    kind: str
    object_id: str
    namespace: str
    encoded: bytes
    hash: bytes
    max_attempts: int
    compares: bool


def _decoder(object_type: type) -> msgspec.json.Decoder[Any]:
    decoder = _decoders.get(object_type)
    if decoder is None:
        decoder = _decoders[object_type] = msgspec.json.Decoder(object_type)
    return decoder


def _check_tags(tags: Iterable[str]) -> tuple[str, ...]:
    checked = tuple(tags)
    for tag in checked:
        if not isinstance(tag, str) or not 1 <= len(tag) <= 255:
            raise ConfigError(f"tags must be strings of 1..255 characters, got {tag!r}")
    return checked


def prepare(objects: Iterable[Object], options: InformParams, app: App | None) -> list[_Item]:
    """Validate and encode `objects`; raise before anything is written if one is bad."""
    items = []
    checked: dict[type, tuple[str, str, int, bool]] = {}  # the options are the call's
    for position, obj in enumerate(objects):
        if not isinstance(obj, Object):
            raise ConfigError(f"item {position} is {type(obj).__name__}, not a delta.Object")
        object_type = type(obj)
        known = checked.get(object_type)
        if known is None:
            known = checked[object_type] = _check_type(object_type, options, app)
        kind, namespace, max_attempts, compares = known
        object_id = id_of(obj)
        problem = _object_id_problem(object_id)
        if problem:
            where = "id" if "id" in object_type.__struct_fields__ else "id()"
            raise ConfigError(
                f"{object_type.__qualname__}.{where} {problem}, got {object_id!r:.100}"
            )
        try:
            encoded = _encoder.encode(obj)
        except (TypeError, ValueError, msgspec.EncodeError) as exc:
            raise EncodeError(
                f"{kind} {object_id!r:.100} (item {position}) does not encode: {exc}"
            ) from exc
        items.append(
            _Item(
                obj, kind, object_id, namespace, encoded,
                hashlib.blake2b(encoded, digest_size=16).digest(),
                max_attempts, compares,
            )
        )  # fmt: skip
    return items


def _object_id_problem(object_id: object) -> str:
    """Say why PostgreSQL could not store or index `object_id`, or return ''."""
    if not isinstance(object_id, str):
        return "must return a string"
    # The limit is in bytes: the identity index takes ~2700 bytes, a character up to 4.
    size = len(object_id.encode("utf-8", "surrogatepass"))
    if not 1 <= size <= OBJECT_ID_MAX_LENGTH:
        return f"must return a string of 1..{OBJECT_ID_MAX_LENGTH} bytes in UTF-8 ({size} given)"
    if "\x00" in object_id:
        return "must return a string without NUL characters"
    return ""


def _check_type(
    object_type: type[Object], options: InformParams, app: App | None
) -> tuple[str, str, int, bool]:
    """Kind, namespace, max_attempts and change detection of one type, validated once."""
    kind = kind_of(object_type)
    registration = app.controller(kind) if app is not None else None
    namespace = options.namespace or (registration.namespace if registration else DEFAULT_NAMESPACE)
    validate_name(namespace, "namespace")
    if app is not None:
        app.namespace(namespace)
    max_attempts = options.max_attempts or (
        registration.max_attempts if registration else DEFAULT_MAX_ATTEMPTS
    )
    if not (isinstance(max_attempts, int) and 1 <= max_attempts <= 32767):
        raise ConfigError(f"max_attempts must be 1..32767, got {max_attempts!r}")
    return kind, namespace, max_attempts, has_compare(object_type)


def encode_options(options: InformParams) -> tuple[str, str]:
    """Return the tags and metadata of an inform as JSON text, or raise naming the problem."""
    try:
        metadata = _json.encode(options.metadata or {}).decode()
    except (TypeError, ValueError, msgspec.EncodeError) as exc:
        raise EncodeError(f"metadata does not encode as JSON: {exc}") from exc
    if options.metadata is not None and not isinstance(options.metadata, dict):
        raise ConfigError(f"metadata must be a dict, got {type(options.metadata).__name__}")
    return _json.encode(list(_check_tags(options.tags))).decode(), metadata


def inform(
    items: list[_Item], options: InformParams
) -> Generator[Statement, Rows, list[InformResult[Any]]]:
    """Inform about `items`; a generator of statements (see the module docstring)."""
    jit = None
    if len(items) >= JIT_OFF_FROM:
        jit = (yield resource_sql.JIT_OFF, {})[0][0]
    last: dict[tuple[str, str], int] = {}
    for index, item in enumerate(items):
        last[(item.kind, item.object_id)] = index
    results, pending = yield from _rounds(items, sorted(last.values()), options)
    if jit is not None:
        yield resource_sql.RESTORE_JIT, {"jit": jit}
    if pending:
        raise DatabaseError(
            f"inform gave up after {MAX_ROUNDS} rounds of concurrent changes to "
            f"{len(pending)} resources, e.g. {items[pending[0]].kind} "
            f"{items[pending[0]].object_id!r}"
        )
    return [_result_for(index, items, last, results) for index in range(len(items))]


def _rounds(
    items: list[_Item], pending: list[int], options: InformParams
) -> Generator[Statement, Rows, tuple[dict[int, InformResult[Any]], list[int]]]:
    """Steps 1-4 for the `pending` indexes: their results, and those still pending."""
    tags, metadata = encode_options(options)
    results: dict[int, InformResult[Any]] = {}
    for round_ in range(MAX_ROUNDS):
        if not pending:
            break
        stored_rows = yield _select_stored(items, pending, lock=round_ > 0)
        stored = {(row.kind, row.object_id): row for row in map(_informed, stored_rows)}
        writes: list[tuple[int, InformedRow | None]] = []
        for index in pending:
            item = items[index]
            row = stored.get((item.kind, item.object_id))
            if row is None:
                writes.append((index, None))
                continue
            outcome, current = _decide(item, row)
            if outcome is None:
                writes.append((index, row))
            else:
                results[index] = InformResult(row.resource(current), outcome)
        if not writes:
            pending = []
            break
        written_rows = yield _write(items, writes, tags, metadata, options.listed)
        written = {(row.kind, row.object_id): row for row in map(_written, written_rows)}
        pending = []
        for index, stored_row in writes:
            item = items[index]
            written_row = written.get((item.kind, item.object_id))
            if written_row is None:
                pending.append(index)  # lost a race with another inform: decide again
                continue
            outcome = InformOutcome.CREATED if stored_row is None else InformOutcome.UPDATED
            results[index] = InformResult(written_row.resource(item.obj), outcome)
    return results, pending


def _informed(values: tuple[Any, ...]) -> InformedRow:
    return InformedRow(*values)


def _written(values: tuple[Any, ...]) -> WrittenRow:
    return WrittenRow(*values)


def _decide(item: _Item, row: InformedRow) -> tuple[InformOutcome | None, Object]:
    """Return (outcome, stored object) for a stored identity; outcome None means write."""
    if item.compares:
        assert row.object is not None  # selected for the kinds that compare
        stored_obj = _decoder(type(item.obj)).decode(row.object)
        order = item.obj.compare(stored_obj)
        if order == 0:
            return InformOutcome.UNCHANGED, stored_obj
        if order < 0:
            return InformOutcome.STALE, stored_obj
        return None, stored_obj
    if bytes(row.hash) == item.hash:
        return InformOutcome.UNCHANGED, item.obj
    return None, item.obj


def _result_for(
    index: int,
    items: list[_Item],
    last: dict[tuple[str, str], int],
    results: dict[int, InformResult[Any]],
) -> InformResult[Any]:
    if index in results:
        return results[index]
    # An earlier object of an identity that the batch repeats: the last one was stored.
    item = items[index]
    kept = results[last[(item.kind, item.object_id)]]
    if items[last[(item.kind, item.object_id)]].hash == item.hash:
        return kept
    return InformResult(kept.resource, InformOutcome.STALE)


def _select_stored(items: list[_Item], indexes: list[int], *, lock: bool) -> Statement:
    query = (
        resource_sql.SELECT_STORED_RESOURCES_FOR_UPDATE
        if lock
        else resource_sql.SELECT_STORED_RESOURCES
    )
    return query, {
        "kinds": [items[i].kind for i in indexes],
        "distinct_kinds": sorted({items[i].kind for i in indexes}),
        "object_ids": [items[i].object_id for i in indexes],
        "compare_kinds": sorted({items[i].kind for i in indexes if items[i].compares}),
    }


def _write(
    items: list[_Item],
    writes: list[tuple[int, InformedRow | None]],
    tags: str,
    metadata: str,
    listed: bool,
) -> Statement:
    chosen = [items[index] for index, _ in writes]
    return resource_sql.WRITE_RESOURCES, {
        "kinds": [i.kind for i in chosen],
        "object_ids": [i.object_id for i in chosen],
        "namespaces": [i.namespace for i in chosen],
        "objects": [i.encoded for i in chosen],
        "hashes": [i.hash for i in chosen],
        "ids": [row.id if row else None for _, row in writes],
        "expected": [row.generation if row else None for _, row in writes],
        "max_attempts": [i.max_attempts for i in chosen],
        "tags": tags,
        "metadata": metadata,
        "listed": listed,
        # The trace context for the works' rows (tracing.py); None unless traced.
        "trace": tracing.carrier() if tracing.ENABLED else None,
    }
