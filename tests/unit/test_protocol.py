"""Pipe frames between supervisor and actors."""

from __future__ import annotations

import struct

import pytest

from delta_actors.errors import ProtocolError
from delta_actors.runtime import protocol


def test_frames_round_trip_in_pieces():
    """Messages split at any byte come out whole and in order."""
    messages = [
        protocol.Started(pid=1, namespace="default", role="worker", actor_id=7),
        protocol.Heartbeat(running=1, claimed=2, completed=3, failed=4, queue_depth=5),
        protocol.Stop(timeout=30.0),
        protocol.Stopped(handed_back=2),
        protocol.Failed(error_type="ValueError", message="x", traceback="tb"),
    ]
    stream = b"".join(protocol.encode(m) for m in messages)
    reader = protocol.FrameReader()
    got: list[protocol.Message] = []
    for i in range(0, len(stream), 3):
        got.extend(reader.feed(stream[i : i + 3]))
    reader.close()
    assert got == messages


def test_garbage_frames_raise_protocol_errors():
    """Undecodable payloads, oversized lengths and truncated streams are errors, not noise."""
    with pytest.raises(ProtocolError, match="undecodable frame"):
        protocol.FrameReader().feed(b"\x00\x00\x00\x08garbage!")
    with pytest.raises(ProtocolError, match="over the"):
        protocol.FrameReader().feed(struct.pack(">I", protocol.MAX_FRAME + 1))
    reader = protocol.FrameReader()
    assert reader.feed(protocol.encode(protocol.Stop(timeout=1.0))[:-1]) == []
    with pytest.raises(ProtocolError, match="ended inside a frame"):
        reader.close()


def test_unknown_tag_is_rejected():
    """A well-formed frame with a tag nobody knows is a protocol error."""
    import msgspec

    payload = msgspec.msgpack.encode({"type": "reboot"})
    with pytest.raises(ProtocolError):
        protocol.FrameReader().feed(struct.pack(">I", len(payload)) + payload)
