"""Messages between the supervisor and its actors, over a pipe.

Frames: a 4-byte big-endian length, then that many bytes of msgpack (msgspec) encoding one
tagged Struct. Every message has an explicit `tag` so a class rename never changes the
wire. One typed decoder reads the union; a frame that is too long, truncated at EOF, or
does not decode into a known message raises ProtocolError: the supervisor then reports it
and restarts the actor, never ignoring it.

Actor -> supervisor: Started, Heartbeat, Stopped, Failed.
Supervisor -> actor: Stop.

Metrics ride on the Heartbeat, never on a frame per job: an actor keeps counters and
histogram buckets per kind (`metrics.Recorder`) and every heartbeat carries their totals
since the actor started (`KindTally`, a few dozen integers per kind), the namespace's
queue depth and lag, the leader's counters, and each component's progress
(`health.ComponentHealth`: the supervisor restarts a leader whose duty stalled). Totals,
not deltas: a lost or late heartbeat costs nothing, and the supervisor adds the last
totals of every actor that ended to what the live ones report, so its counters never go
backwards across restarts.
An actor sends one last Heartbeat right before Stopped, so a clean stop loses no count.
"""

from __future__ import annotations

import struct
from typing import Final

import msgspec

from delta_actors.errors import ProtocolError
from delta_actors.health import ComponentHealth
from delta_actors.model.gauges import ClusterGauges

MAX_FRAME: Final = 1 << 20  # bytes; nothing we send comes near it
_HEADER = struct.Struct(">I")


class Started(msgspec.Struct, tag="started", frozen=True):
    """The actor is connected, registered and claiming."""

    pid: int
    namespace: str
    role: str
    actor_id: int


class KindTally(msgspec.Struct, array_like=True, frozen=True):
    """Runs of one kind since the actor started: counts per result, duration buckets."""

    kind: str
    is_work: bool  # a resource work (reconcile); False for a plain job
    results: dict[str, int]
    buckets: list[int]  # runs per metrics.BUCKETS bound (not cumulative), then the overflow
    seconds: float  # the sum of the run durations


class InformerTally(msgspec.Struct, array_like=True, frozen=True):
    """One kind's informer runs on this leader candidate since it started, by result, and
    the kind's last success as the database records it (epoch seconds; None: never)."""

    kind: str
    results: dict[str, int]
    last_success: float | None


class Heartbeat(msgspec.Struct, tag="heartbeat", frozen=True):
    """The actor lives; its counters since it started, and its gauges now."""

    running: int
    claimed: int
    completed: int
    failed: int
    queue_depth: int
    queue_lag: float = 0.0  # seconds the oldest available work of the namespace has waited
    max_workers: int = 0
    kinds: list[KindTally] = []
    rescued: int = 0  # claims the leader's rescuer returned to work
    is_leader: bool = False
    elected: int = 0  # terms this leader candidate won
    lost: int = 0  # terms it lost or gave up
    health: list[ComponentHealth] = []  # what each component last got done (health.py)
    informers: list[InformerTally] = []  # the leader's informer runs
    cluster: ClusterGauges | None = None  # the leader's reading of the cluster, while it leads


class Stop(msgspec.Struct, tag="stop", frozen=True):
    """Stop claiming; finish running works within `timeout` seconds, hand back the rest."""

    timeout: float


class Stopped(msgspec.Struct, tag="stopped", frozen=True):
    """The actor stopped cleanly and is about to exit 0."""

    handed_back: int


class Failed(msgspec.Struct, tag="failed", frozen=True):
    """The actor failed and is about to exit non-zero; a failure travels as data."""

    error_type: str
    message: str
    traceback: str


Message = Started | Heartbeat | Stop | Stopped | Failed

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Message)


def encode(message: Message) -> bytes:
    """Return `message` as one length-prefixed frame."""
    payload = _encoder.encode(message)
    return _HEADER.pack(len(payload)) + payload


class FrameReader:
    """Splits a byte stream into messages; feed it what the pipe gives."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Message]:
        """Add `data`; return the messages it completes. Raises ProtocolError on garbage."""
        self._buffer += data
        messages: list[Message] = []
        while len(self._buffer) >= _HEADER.size:
            (length,) = _HEADER.unpack_from(self._buffer)
            if length > MAX_FRAME:
                raise ProtocolError(
                    f"frame of {length} bytes announced, over the {MAX_FRAME} limit"
                )
            end = _HEADER.size + length
            if len(self._buffer) < end:
                break
            payload = bytes(self._buffer[_HEADER.size : end])
            del self._buffer[:end]
            try:
                messages.append(_decoder.decode(payload))
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                raise ProtocolError(f"undecodable frame of {length} bytes: {exc}") from exc
        return messages

    @property
    def buffered(self) -> int:
        """Bytes received of a frame not yet complete."""
        return len(self._buffer)

    def close(self) -> None:
        """The stream ended: raise ProtocolError if it stopped inside a frame."""
        if self._buffer:
            raise ProtocolError(f"stream ended inside a frame ({len(self._buffer)} bytes left)")
