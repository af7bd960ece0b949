"""Pipe frames that are truncated, oversized or garbage: always a ProtocolError, never a
crash of another kind, never a message made up from noise."""

from __future__ import annotations

import random
import struct

import msgspec
import pytest

from delta_actors.errors import ProtocolError
from delta_actors.runtime import protocol

STREAM = b"".join(
    protocol.encode(m)
    for m in (
        protocol.Started(pid=1, namespace="default", role="worker", actor_id=7),
        protocol.Heartbeat(running=1, claimed=2, completed=3, failed=4, queue_depth=5),
        protocol.Stopped(handed_back=0),
    )
)


def _frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def test_every_truncation_of_a_stream_is_reported_at_its_end():
    """Cut anywhere but between frames, the stream's end is a ProtocolError naming the
    bytes left; cut between frames, the whole frames before it come out."""
    boundaries = {0}
    offset = 0
    while offset < len(STREAM):
        (length,) = struct.unpack_from(">I", STREAM, offset)
        offset += 4 + length
        boundaries.add(offset)
    for cut in range(len(STREAM)):
        reader = protocol.FrameReader()
        messages = reader.feed(STREAM[:cut])
        if cut in boundaries:
            reader.close()
            assert reader.buffered == 0
        else:
            assert reader.buffered > 0
            with pytest.raises(ProtocolError, match=f"ended inside a frame \\({reader.buffered}"):
                reader.close()
        assert len(messages) == sorted(boundaries).index(max(b for b in boundaries if b <= cut))


def test_a_frame_announcing_the_limit_waits_and_one_past_it_fails_before_its_payload():
    """MAX_FRAME bytes may be announced (the reader waits, counting what it holds); one
    more is refused from the header alone, so garbage cannot make the reader buffer GBs."""
    reader = protocol.FrameReader()
    assert reader.feed(struct.pack(">I", protocol.MAX_FRAME) + b"abc") == []
    assert reader.buffered == 7
    with pytest.raises(ProtocolError, match="4294967295 bytes announced"):
        protocol.FrameReader().feed(b"\xff\xff\xff\xff")


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xc1",  # a byte msgpack never uses
        msgspec.msgpack.encode({"type": "heartbeat", "running": "many"}),
        msgspec.msgpack.encode({"type": "heartbeat"}),
        msgspec.msgpack.encode(["stop", 1.0]),
        msgspec.msgpack.encode(None),
        msgspec.msgpack.encode({"type": "stop", "timeout": 1.0}) + b"trailing",
    ],
    ids=["empty", "bad-byte", "wrong-type", "missing-fields", "array", "nil", "trailing-bytes"],
)  # fmt: skip
def test_frames_that_do_not_decode_into_a_message_are_protocol_errors(payload):
    """Well-framed payloads that are not exactly one known message are refused."""
    with pytest.raises(ProtocolError, match="undecodable frame"):
        protocol.FrameReader().feed(_frame(payload))


def test_garbage_after_a_good_frame_keeps_the_good_one_out_of_nothing():
    """A garbage frame raises; the reader never returns a message built from its bytes."""
    reader = protocol.FrameReader()
    assert reader.feed(protocol.encode(protocol.Stop(timeout=2.0))) == [protocol.Stop(2.0)]
    with pytest.raises(ProtocolError):
        reader.feed(_frame(b"garbage!"))


def test_random_bytes_only_ever_raise_protocol_errors():
    """Seeded noise, fed in random pieces: messages or ProtocolError, nothing else."""
    rng = random.Random(20261129)  # noqa: S311 (reproducible noise, not secrets)
    for _ in range(2000):
        noise = rng.randbytes(rng.randrange(1, 64))
        if rng.random() < 0.5:  # a plausible header, to reach the decoder
            noise = struct.pack(">I", len(noise)) + noise
        reader = protocol.FrameReader()
        try:
            start = 0
            while start < len(noise):
                step = rng.randrange(1, 9)
                for message in reader.feed(noise[start : start + step]):
                    assert isinstance(message, protocol.Message)  # type: ignore[arg-type]
                start += step
            reader.close()
        except ProtocolError:
            continue
