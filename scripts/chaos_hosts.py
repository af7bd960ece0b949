"""Separate hosts for the fault-injection harness: network namespaces, and faults on their links.

Each host is a network namespace `dlt-<pid>-h<i>` with one veth pair: `dlt-<pid>-r<i>` in
the root namespace, at 10.A.B.(4i+1)/30, and `dlt-<pid>-n<i>` in the host, at
10.A.B.(4i+2)/30 (A.B drawn from our pid). PostgreSQL listens on every root-side address
as well as on its Unix socket; a supervisor started in the host (`ip netns exec`) reaches
it over TCP at its own pair's root-side address. A host has no other route (no default
route, its own loopback), so its traffic stays on its pair: nothing leaves the machine.

Faults, on one host at a time, each healed at its end:

- `net_partition`: the root end of the pair down, as a pulled cable: packets vanish both
  ways while the host's processes run on (their heartbeats and lease lapse);
- `net_oneway`: iptables in the host drops what comes from PostgreSQL; what the host
  sends still arrives (its statements may commit, it never hears the replies);
- `net_latency`: 200 ms +/- 50 ms and 5 % loss on what the host sends: `tc netem` where
  the kernel has it, else netem_queue.py on an NFQUEUE (iptables), the same figures;
- `net_flap`: the link down and up again, 0.3-1.5 s each way, for the fault's length.

Invariants:
- Names carry our pid, so parallel runs never collide; everything created is recorded
  and removed by `remove()` (the harness calls it in `finally` and at exit), and `sweep()`
  removes what a run of ours that died left behind (prefix `dlt-`, its pid gone).
- Deleting a namespace deletes its end of the pair, its iptables rules and its queue, so
  a host's faults cannot outlive the host.
- `unavailable()` says why hosts cannot be made here (not root, no `ip netns`, no
  iptables), so that callers can skip with that reason instead of failing.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

PREFIX = "dlt-"
NET_FAULTS = ("net_partition", "net_oneway", "net_latency", "net_flap")
DELAY, JITTER, LOSS = 0.2, 0.05, 0.05  # net_latency: seconds, seconds, share
NETEM_QUEUE = Path(__file__).with_name("netem_queue.py")

# With --hosts: what the server needs so that a cut-off host's sessions end within the
# rescue TTL (each well inside RESCUE_TTL; `--server-timeouts off` leaves the defaults).
SERVER_TIMEOUTS = {
    "idle_in_transaction_session_timeout": "2s",
    "tcp_keepalives_idle": "1",
    "tcp_keepalives_interval": "1",
    "tcp_keepalives_count": "2",
    "tcp_user_timeout": "2000",  # ms: unacknowledged data (a reply to a host cut off)
}
# How long the server takes, with those settings, to end the session of a host that went
# silent: keepalive probes start after 1 s idle and give up after 2 more (a session idle
# in a transaction goes after 2 s, unacknowledged replies after 2 s). Rescue waits that
# long for the row locks such a session held, so it widens the rescue bound.
SESSION_END_BOUND = 3.0
_STALE = re.compile(rf"^{PREFIX}(\d+)-[hr]\d+$")


def _run(
    argv: list[str], netns: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run `argv` (inside `netns` when given); raise with its stderr if it fails and `check`."""
    if netns is not None:
        argv = ["ip", "netns", "exec", netns, *argv]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {result.returncode}: {result.stderr.strip()}")
    return result


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return _run(["ip", *args], check=check)


def unavailable() -> str | None:
    """Why namespaced hosts cannot be made on this machine; None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root (run as root, or with CAP_NET_ADMIN)"
    for tool, package in (("ip", "iproute2"), ("tc", "iproute2"), ("iptables", "iptables")):
        if shutil.which(tool) is None:
            return f"`{tool}` not found (Debian package {package})"
    probe = f"{PREFIX}{os.getpid()}-h99"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    try:
        for argv in (["ip", "link", "set", "lo", "up"], ["iptables", "-w", "-S"]):
            result = _run(argv, probe, check=False)
            if result.returncode != 0:
                return f"`{' '.join(argv)}` in a namespace failed: {result.stderr.strip()}"
    finally:
        _ip("netns", "delete", probe, check=False)
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def list_ours() -> list[str]:
    """The namespaces and root-side links named like ours (any run's)."""
    names = [line.split()[0] for line in _ip("netns", "list").stdout.splitlines() if line]
    names += [
        line.split(":")[1].strip().split("@")[0]
        for line in _ip("-o", "link", "show").stdout.splitlines()
        if ":" in line
    ]
    return [name for name in names if _STALE.match(name)]


def sweep() -> list[str]:
    """Delete the namespaces and links of our runs that died; return their names."""
    removed = []
    for name in list_ours():
        match = _STALE.match(name)
        if match is None or _pid_alive(int(match.group(1))):
            continue
        if name.split("-")[-1].startswith("h"):
            _ip("netns", "delete", name, check=False)
        else:
            _ip("link", "delete", name, check=False)
        removed.append(name)
    return removed


def has_netem() -> bool:
    """Whether this kernel has the netem qdisc (many minimal kernels are built without)."""
    probe = f"{PREFIX}{os.getpid()}-h98"
    _ip("netns", "add", probe)
    try:
        _run(["ip", "link", "set", "lo", "up"], probe)
        netem = ["tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"]
        added = _run(netem, probe, check=False)
        return added.returncode == 0
    finally:
        _ip("netns", "delete", probe, check=False)


@dataclass
class Host:
    """One namespaced host: its namespace, its pair's two ends and their addresses."""

    index: int
    netns: str
    outside: str  # the root end of the pair
    inside: str  # the host's end
    server_address: str  # PostgreSQL's address on this pair (the root end's)
    address: str  # the host's own
    faulted_until: float = 0.0  # time.time(); a fault runs on this host until then
    queue: subprocess.Popen[bytes] | None = field(default=None, repr=False)


class Hosts:
    """`count` namespaced hosts, made at once; `remove()` deletes every one."""

    def __init__(self, count: int, log_dir: Path) -> None:
        self.count = count
        self.log_dir = log_dir
        pid = os.getpid()
        self.subnet = f"10.{64 + (pid >> 8) % 128}.{pid % 256}"
        self.prefix = f"{PREFIX}{pid}-"
        self.hosts: list[Host] = []
        self.shaper = ""  # "netem" or "nfqueue", chosen by create()
        self.lock = threading.Lock()

    def create(self) -> None:
        sweep()
        self.shaper = "netem" if has_netem() else "nfqueue"
        taken = _ip("-o", "-4", "addr", "show").stdout
        if f" {self.subnet}." in taken:
            raise RuntimeError(f"{self.subnet}.0/24 is in use on this machine; not ours to take")
        for index in range(self.count):
            host = Host(
                index, f"{self.prefix}h{index}", f"{self.prefix}r{index}", f"{self.prefix}n{index}",
                f"{self.subnet}.{4 * index + 1}", f"{self.subnet}.{4 * index + 2}",
            )  # fmt: skip
            self.hosts.append(host)  # before making it: remove() deletes what exists
            _ip("netns", "add", host.netns)
            _ip("link", "add", host.outside, "type", "veth", "peer", "name", host.inside)
            _ip("link", "set", host.inside, "netns", host.netns)
            _ip("addr", "add", f"{host.server_address}/30", "dev", host.outside)
            _ip("link", "set", host.outside, "up")
            _run(["ip", "addr", "add", f"{host.address}/30", "dev", host.inside], host.netns)
            _run(["ip", "link", "set", host.inside, "up"], host.netns)
            _run(["ip", "link", "set", "lo", "up"], host.netns)

    def remove(self) -> None:
        """Delete every host (its namespace, its pair, its rules); safe to call twice."""
        with self.lock:
            for host in self.hosts:
                self._stop_queue(host)
                _ip("netns", "delete", host.netns, check=False)
                _ip("link", "delete", host.outside, check=False)  # gone with the netns, mostly
            self.hosts = []

    def listen_addresses(self) -> list[str]:
        return [host.server_address for host in self.hosts]

    def hba_line(self) -> str:
        """The pg_hba.conf line that lets the hosts in (trust, as the cluster's socket)."""
        return f"host all all {self.subnet}.0/24 trust"

    def command(self, host: Host, argv: list[str]) -> list[str]:
        """`argv` run inside `host` (ip netns exec execs it: the pid is the command's)."""
        return ["ip", "netns", "exec", host.netns, *argv]

    # -- faults

    def break_link(self, host: Host, kind: str, seconds: float, rng: random.Random) -> str:
        """Start fault `kind` on `host` for `seconds` (healed by a timer); say what it is."""
        host.faulted_until = time.time() + seconds
        match kind:
            case "net_partition":
                _ip("link", "set", host.outside, "down")
                detail = f"host {host.index} partitioned from PostgreSQL for {seconds:.1f}s"
                heal = self._link_up
            case "net_oneway":
                self._iptables(host, "-A", "INPUT", "-s", host.server_address, "-j", "DROP")
                detail = (
                    f"host {host.index}: what PostgreSQL sends dropped for {seconds:.1f}s"
                    " (what the host sends arrives)"
                )
                heal = self._accept_again
            case "net_latency":
                self._slow_down(host, seconds)
                detail = (
                    f"host {host.index}: {DELAY * 1000:.0f}ms +/- {JITTER * 1000:.0f}ms and"
                    f" {LOSS:.0%} loss ({self.shaper}) for {seconds:.1f}s"
                )
                heal = self._speed_up
            case "net_flap":
                threading.Thread(
                    target=self._flap, args=(host, seconds, random.Random(rng.random())),
                    daemon=True, name=f"flap:{host.index}",
                ).start()  # fmt: skip
                return f"host {host.index}: link flapping for {seconds:.1f}s"
            case _:
                raise AssertionError(kind)
        timer = threading.Timer(seconds, self._heal, (host, heal))
        timer.daemon = True
        timer.start()
        return detail

    def _heal(self, host: Host, heal: object) -> None:
        with self.lock:
            if host in self.hosts:
                heal(host)  # type: ignore[operator]

    def _link_up(self, host: Host) -> None:
        _ip("link", "set", host.outside, "up")

    def _flap(self, host: Host, seconds: float, rng: random.Random) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            with self.lock:
                if host not in self.hosts:
                    return
                _ip("link", "set", host.outside, "down")
            time.sleep(min(rng.uniform(0.3, 1.5), max(0.0, end - time.monotonic())))
            with self.lock:
                if host not in self.hosts:
                    return
                _ip("link", "set", host.outside, "up")
            time.sleep(rng.uniform(0.3, 1.5))

    def _iptables(self, host: Host, *rule: str) -> None:
        _run(["iptables", "-w", *rule], host.netns)

    def _accept_again(self, host: Host) -> None:
        self._iptables(host, "-D", "INPUT", "-s", host.server_address, "-j", "DROP")

    def _slow_down(self, host: Host, seconds: float) -> None:
        if self.shaper == "netem":
            _run(["tc", "qdisc", "add", "dev", host.inside, "root", "netem",
                  "delay", f"{DELAY * 1000:.0f}ms", f"{JITTER * 1000:.0f}ms",
                  "loss", f"{LOSS * 100:g}%"], host.netns)  # fmt: skip
            return
        # The queue program first, then the rule (with bypass: should the program die,
        # packets pass unharmed rather than stall the host).
        log = (self.log_dir / f"netem-queue-{host.index}.log").open("ab")
        host.queue = subprocess.Popen(
            self.command(host, [
                sys.executable, str(NETEM_QUEUE), "--queue", str(host.index + 1),
                "--delay", str(DELAY), "--jitter", str(JITTER), "--loss", str(LOSS),
                "--seconds", str(seconds + 5.0), "--seed", str(host.index),
            ]),
            stdout=log, stderr=log,
        )  # fmt: skip
        log.close()
        time.sleep(0.3)  # bound the queue before the rule sends it packets
        self._iptables(host, "-A", "OUTPUT", "-d", host.server_address, "-j", "NFQUEUE",
                       "--queue-num", str(host.index + 1), "--queue-bypass")  # fmt: skip

    def _speed_up(self, host: Host) -> None:
        if self.shaper == "netem":
            _run(["tc", "qdisc", "del", "dev", host.inside, "root"], host.netns, check=False)
            return
        self._iptables(host, "-D", "OUTPUT", "-d", host.server_address, "-j", "NFQUEUE",
                       "--queue-num", str(host.index + 1), "--queue-bypass")  # fmt: skip
        self._stop_queue(host)

    def _stop_queue(self, host: Host) -> None:
        if host.queue is None:
            return
        with contextlib.suppress(ProcessLookupError):
            host.queue.send_signal(signal.SIGTERM)
        try:
            host.queue.wait(10)
        except subprocess.TimeoutExpired:
            host.queue.kill()
            host.queue.wait()
        host.queue = None
