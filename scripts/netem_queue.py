"""A userspace stand-in for `tc netem delay D J loss P`, for kernels built without netem.

    ip netns exec HOST python scripts/netem_queue.py --queue 7 --delay 0.2 --jitter 0.05 \
        --loss 0.05 --seconds 8

Run inside a network namespace whose nftables rules send packets to NFQUEUE `--queue`
(chaos_hosts.py adds them: the host's outgoing packets, with `bypass`, so that packets go
through unharmed whenever no program listens). For each packet the kernel queues, it
waits `delay` plus a uniform draw in [-jitter, +jitter] seconds (like netem, packets may
be reordered by the jitter), then lets it through, or drops it with probability `loss`.
It talks to the kernel over a raw NETLINK_NETFILTER socket (nfnetlink_queue), so it needs
no package beyond Python.

Invariants:
- Every packet it was handed gets a verdict before it exits: at `--seconds` (or SIGTERM)
  it stops taking packets and releases the ones it holds at once, undelayed.
- It never holds more than QUEUE_MAX packets (the kernel drops past that, as a full
  netem queue would) and exits with 1 on any netlink error, printing it.
"""

from __future__ import annotations

import argparse
import heapq
import os
import random
import select
import signal
import socket
import struct
import sys
import time

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_VERDICT, NFQNL_MSG_CONFIG = 0, 1, 2
NFQA_CFG_CMD, NFQA_CFG_PARAMS, NFQA_CFG_QUEUE_MAXLEN = 1, 2, 3
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META = 1
NFQA_PACKET_HDR, NFQA_VERDICT_HDR = 1, 2
NF_DROP, NF_ACCEPT = 0, 1
NLM_F_REQUEST, NLM_F_ACK = 1, 4
NLMSG_ERROR = 2
QUEUE_MAX = 8192
RECEIVE_BUFFER = 8 << 20


def _attribute(kind: int, data: bytes) -> bytes:
    length = 4 + len(data)
    return struct.pack("=HH", length, kind) + data + b"\0" * (-length % 4)


def _message(kind: int, queue: int, attributes: bytes, flags: int = NLM_F_REQUEST) -> bytes:
    # nfgenmsg: family AF_UNSPEC, version 0, res_id = the queue number (big-endian)
    body = struct.pack("!BBH", socket.AF_UNSPEC, 0, queue) + attributes
    header = struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_QUEUE << 8) | kind, flags, 0, 0)
    return header + body


def _check_ack(sock: socket.socket) -> None:
    data = sock.recv(65536)
    kind = struct.unpack_from("=H", data, 4)[0]
    if kind == NLMSG_ERROR:
        (error,) = struct.unpack_from("=i", data, 16)
        if error:
            raise OSError(-error, f"nfnetlink_queue: {os.strerror(-error)}")


def open_queue(queue: int) -> socket.socket:
    """Bind `queue`, metadata only (the verdict needs only the packet's id)."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    sock.setsockopt(socket.SOL_SOCKET, 33, RECEIVE_BUFFER)  # SO_RCVBUFFORCE: we are root
    sock.bind((0, 0))
    bind = _attribute(NFQA_CFG_CMD, struct.pack("!BxH", NFQNL_CFG_CMD_BIND, socket.AF_INET))
    sock.send(_message(NFQNL_MSG_CONFIG, queue, bind, NLM_F_REQUEST | NLM_F_ACK))
    _check_ack(sock)
    params = _attribute(NFQA_CFG_PARAMS, struct.pack("!IB", 0, NFQNL_COPY_META))
    params += _attribute(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", QUEUE_MAX))
    sock.send(_message(NFQNL_MSG_CONFIG, queue, params, NLM_F_REQUEST | NLM_F_ACK))
    _check_ack(sock)
    return sock


def packet_ids(data: bytes) -> list[int]:
    """The ids of the queued packets in one netlink read (it may hold several messages)."""
    ids = []
    offset = 0
    while offset + 16 <= len(data):
        length, kind = struct.unpack_from("=IH", data, offset)
        if length < 16:
            break
        if kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
            at = offset + 20  # past nlmsghdr and nfgenmsg
            while at + 4 <= offset + length:
                size, attribute = struct.unpack_from("=HH", data, at)
                if size < 4:
                    break
                if attribute & 0x7FFF == NFQA_PACKET_HDR:
                    ids.append(struct.unpack_from("!I", data, at + 4)[0])
                at += (size + 3) & ~3
        elif kind == NLMSG_ERROR:
            (error,) = struct.unpack_from("=i", data, offset + 16)
            if error:
                raise OSError(-error, f"nfnetlink_queue: {os.strerror(-error)}")
        offset += (length + 3) & ~3
    return ids


def verdict(sock: socket.socket, queue: int, packet: int, accept: bool) -> None:
    header = struct.pack("!II", NF_ACCEPT if accept else NF_DROP, packet)
    sock.send(_message(NFQNL_MSG_VERDICT, queue, _attribute(NFQA_VERDICT_HDR, header)))


def run(args: argparse.Namespace) -> dict[str, int]:
    """Delay and drop until `args.seconds` pass or SIGTERM; return the counts."""
    rng = random.Random(args.seed)
    sock = open_queue(args.queue)
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    held: list[tuple[float, int]] = []  # (release at, packet id), a heap
    counts = {"packets": 0, "dropped": 0}
    end = time.monotonic() + args.seconds
    try:
        while not stopping and time.monotonic() < end:
            now = time.monotonic()
            while held and held[0][0] <= now:
                _, packet = heapq.heappop(held)
                verdict(sock, args.queue, packet, accept=True)
            wait = min(end - now, held[0][0] - now if held else 0.1, 0.1)
            try:
                readable, _, _ = select.select([sock], [], [], max(wait, 0.0))
            except InterruptedError:
                continue
            if not readable:
                continue
            for packet in packet_ids(sock.recv(1 << 20)):
                counts["packets"] += 1
                if rng.random() < args.loss:
                    counts["dropped"] += 1
                    verdict(sock, args.queue, packet, accept=False)
                    continue
                delay = max(0.0, args.delay + rng.uniform(-args.jitter, args.jitter))
                heapq.heappush(held, (time.monotonic() + delay, packet))
    finally:
        # Whatever happens, no packet stays in the kernel's queue without a verdict.
        for _, packet in held:
            verdict(sock, args.queue, packet, accept=True)
        sock.close()
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queue", type=int, required=True)
    parser.add_argument("--delay", type=float, default=0.2, help="seconds (default 0.2)")
    parser.add_argument("--jitter", type=float, default=0.05, help="seconds, +/- (default 0.05)")
    parser.add_argument("--loss", type=float, default=0.05, help="share dropped (default 0.05)")
    parser.add_argument("--seconds", type=float, required=True, help="then exit")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    try:
        counts = run(args)
    except OSError as exc:
        print(f"netem_queue: {exc}", file=sys.stderr)
        return 1
    print(f"netem_queue: {counts['packets']} packets, {counts['dropped']} dropped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
