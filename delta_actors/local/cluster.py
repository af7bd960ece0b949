"""A local PostgreSQL cluster run from the machine's server binaries.

Two users share this code: the pytest plugin of delta.testing, which our own test harness
builds on (throwaway: fsync off, removed afterwards), and `delta-actors supervise` with no
DSN (embedded: durable settings, kept in the user's data folder). The server listens on a
Unix socket only (`listen_addresses = ''`) in a short directory, since socket paths must
stay under 107 bytes. PostgreSQL refuses to run as root, so when we are root the server
runs as an unprivileged user (`nobody` by default) that owns the data and socket
directories.

Memory and WAL settings (`tuned_settings`) follow the machine's memory: the embedded
cluster gets them when it is created, and a throwaway cluster can ask for them
(`throwaway_cluster(tuned=True)`) so that a benchmark measures what users get.
docs/operations.md says why each one is set and what to choose on a server of your own.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from delta_actors.errors import ClusterError

SUPERUSER = "postgres"
_SOCKET_PATH_LIMIT = 107

_THROWAWAY_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "300",
    "shared_buffers": "128MB",
}
# With tuned_settings() on top, which sets shared_buffers and the WAL.
_DURABLE_SETTINGS = {
    "max_connections": "200",
}
_MB = 1024 * 1024
# The embedded server shares its machine with the app and its actors: an eighth of the
# memory for PostgreSQL's own cache (a dedicated server would give a quarter), at least
# PostgreSQL's default and at most enough for a few million resources and their works.
_SHARED_BUFFERS_SHARE = 8
_SHARED_BUFFERS_MIN = 128 * _MB
_SHARED_BUFFERS_MAX = 2048 * _MB


def machine_memory() -> int:
    """Return the bytes of memory this process may use: the machine's, or its cgroup's."""
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text(encoding="ascii").strip()
    except OSError:
        return int(total)
    return int(total) if not limit.isdigit() else min(int(total), int(limit))


def tuned_settings(memory: int | None = None) -> dict[str, str]:
    """Memory and WAL settings for a machine of `memory` bytes (default: this one's)."""
    memory = machine_memory() if memory is None else memory
    shared = min(max(memory // _SHARED_BUFFERS_SHARE, _SHARED_BUFFERS_MIN), _SHARED_BUFFERS_MAX)
    return {
        "shared_buffers": f"{shared // _MB}MB",
        # A planner hint, nothing is allocated: what the OS page cache holds besides.
        "effective_cache_size": f"{max(memory // 2, shared) // _MB}MB",
        "maintenance_work_mem": f"{min(max(memory // 64, 64 * _MB), 512 * _MB) // _MB}MB",
        # Full-page images after each checkpoint are most of the WAL of random index
        # inserts: compress them, and checkpoint less often than every 5 min / 1 GB.
        "wal_compression": "on",
        "checkpoint_timeout": "15min",
        "max_wal_size": "2GB",
        "checkpoint_completion_target": "0.9",
    }


def find_bindir() -> Path:
    """Locate the PostgreSQL server binaries, or raise ClusterError naming the fix."""
    candidates: list[str] = []
    if os.environ.get("PG_BINDIR"):
        candidates.append(os.environ["PG_BINDIR"])
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, check=True, timeout=10
            )
            candidates.append(out.stdout.strip())
        except (OSError, subprocess.SubprocessError):
            pass

    def version_of(path: str) -> float:
        try:
            return float(Path(path).parent.name)
        except ValueError:
            return 0.0

    candidates.extend(sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version_of, reverse=True))
    for candidate in candidates:
        if candidate and (Path(candidate) / "initdb").is_file():
            return Path(candidate)
    raise ClusterError(
        "PostgreSQL server binaries (initdb, pg_ctl) not found in $PG_BINDIR, "
        "`pg_config --bindir` or /usr/lib/postgresql/*/bin: install the `postgresql` "
        "package or set PG_BINDIR"
    )


def _server_user() -> str | None:
    """Return the user to run the server as: None for ourselves, `nobody` when root."""
    if os.geteuid() != 0:
        return None
    return os.environ.get("DELTA_PG_USER", "nobody")


def server_uid() -> int:
    """Return the uid the server runs as."""
    user = _server_user()
    return os.geteuid() if user is None else pwd.getpwnam(user).pw_uid


def short_socket_dir(prefix: str = "dpg") -> Path:
    """Create a private, short directory for a Unix socket."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


@dataclass
class PostgresCluster:
    """One PostgreSQL cluster: a data directory and a server listening on a Unix socket."""

    data_dir: Path
    socket_dir: Path
    durable: bool = True
    port: int = 5432
    bindir: Path = field(default_factory=find_bindir)
    settings: dict[str, str] = field(default_factory=dict)
    # A temporary folder that holds data_dir, deleted with it by remove().
    scratch_root: Path | None = None

    def __post_init__(self) -> None:
        socket = self.socket_dir / f".s.PGSQL.{self.port}"
        if len(str(socket)) > _SOCKET_PATH_LIMIT:
            raise ClusterError(
                f"socket path {socket} is {len(str(socket))} bytes, over the "
                f"{_SOCKET_PATH_LIMIT}-byte limit: use a shorter socket directory"
            )
        self._user = _server_user()

    @property
    def log_file(self) -> Path:
        """Where the server writes its log."""
        return self.data_dir / "delta-server.log"

    def dsn(self, dbname: str = "postgres") -> str:
        """Return a libpq URL for `dbname` on this cluster's socket."""
        return f"postgresql://{SUPERUSER}@/{dbname}?host={self.socket_dir}&port={self.port}"

    def is_initialized(self) -> bool:
        """Return whether the data directory holds a cluster."""
        return (self.data_dir / "PG_VERSION").is_file()

    def is_running(self) -> bool:
        """Return whether a server runs on this data directory."""
        if not self.is_initialized():
            return False
        result = self._run(["pg_ctl", "status", "-D", str(self.data_dir)], check=False)
        return result.returncode == 0

    def init(self) -> None:
        """Create the cluster unless it exists (initdb -E UTF8 --locale=C, trust auth)."""
        if self.is_initialized():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._hand_over(self.data_dir)
        self._run(
            [
                "initdb", "-D", str(self.data_dir), "-U", SUPERUSER, "-E", "UTF8",
                "--locale=C", "--auth=trust", "--no-instructions",
                *([] if self.durable else ["--no-sync"]),
            ]
        )  # fmt: skip
        settings = dict(_DURABLE_SETTINGS if self.durable else _THROWAWAY_SETTINGS)
        if self.durable:
            settings.update(tuned_settings())
        settings.update(self.settings)
        settings.update({"listen_addresses": "''", "unix_socket_permissions": "0777"})
        lines = [f"{key} = {value}" for key, value in settings.items()]
        with (self.data_dir / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write("\n# delta_actors\n" + "\n".join(lines) + "\n")

    def start(self, timeout: float = 60.0) -> None:
        """Start the server and wait until it accepts connections."""
        if self.is_running():
            return
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        self._hand_over(self.socket_dir)
        result = self._run(
            [
                "pg_ctl", "start", "-w", "-t", str(int(timeout)), "-D", str(self.data_dir),
                "-l", str(self.log_file),
                "-o", f"-k {self.socket_dir} -p {self.port}",
            ],
            check=False,
        )  # fmt: skip
        if result.returncode != 0:
            raise ClusterError(
                f"PostgreSQL in {self.data_dir} did not start: {result.stderr.strip()}\n"
                f"{self.log_tail()}"
            )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (mode fast, smart or immediate); a stopped server is fine."""
        if not self.is_running():
            return
        self._run(["pg_ctl", "stop", "-w", "-m", mode, "-D", str(self.data_dir)], check=False)

    def restart(self, mode: str = "fast") -> None:
        """Stop and start again: what fault tests use to restart PostgreSQL."""
        self.stop(mode)
        self.start()

    def remove(self) -> None:
        """Stop the server and delete its data and socket directories."""
        self.stop("immediate")
        shutil.rmtree(self.data_dir, ignore_errors=True)
        shutil.rmtree(self.socket_dir, ignore_errors=True)
        if self.scratch_root is not None:
            shutil.rmtree(self.scratch_root, ignore_errors=True)

    def log_tail(self, lines: int = 20) -> str:
        """Return the last lines of the server log, for error messages."""
        try:
            text = self.log_file.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no server log)"
        return "\n".join(text.splitlines()[-lines:])

    def _hand_over(self, path: Path, *, recursive: bool = True) -> None:
        if self._user is None:
            return
        entry = pwd.getpwnam(self._user)
        targets = [path]
        if recursive:
            targets.extend(path.rglob("*"))
        for target in targets:
            os.chown(target, entry.pw_uid, entry.pw_gid)

    def _run(self, argv: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = [str(self.bindir / argv[0]), *argv[1:]]
        try:
            result = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                user=self._user,
                cwd="/",
                stdin=subprocess.DEVNULL,
                timeout=120,
                check=False,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise ClusterError(f"{' '.join(argv)} failed: {exc}") from exc
        if check and result.returncode != 0:
            raise ClusterError(
                f"{' '.join(argv)} exited {result.returncode}: {result.stderr.strip()}"
            )
        return result


def throwaway_cluster(*, tuned: bool = False) -> PostgresCluster:
    """Create and start a fast, non-durable cluster in fresh temporary directories.

    With `tuned`, the memory and WAL settings of the embedded cluster (`tuned_settings`);
    else PostgreSQL's defaults (128 MB of shared buffers), which the tests use.
    """
    base = Path(tempfile.mkdtemp(prefix="delta-pg-"))
    cluster = PostgresCluster(
        data_dir=base / "data",
        socket_dir=short_socket_dir(),
        durable=False,
        scratch_root=base,
        settings=tuned_settings() if tuned else {},
    )
    try:
        cluster._hand_over(base, recursive=False)  # the server must reach data/
        cluster.init()
        cluster.start()
    except BaseException:
        cluster.remove()
        raise
    return cluster
