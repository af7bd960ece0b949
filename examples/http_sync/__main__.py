"""`python3 -m examples.http_sync`: serve the articles API, then supervise the app.

The API runs in its own process (the supervisor forks its actors, so it should not own
threads); its URL reaches the informer through $HTTP_SYNC_URL. Extra arguments are passed
to `delta-actors supervise` (e.g. `--dsn postgresql://...`).
"""

from __future__ import annotations

import os
import subprocess
import sys

from delta_actors.ops.cli import main as cli
from examples.http_sync.app import URL_ENV


def main() -> None:
    api = subprocess.Popen(
        [sys.executable, "-m", "examples.http_sync.api"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert api.stdout is not None
        url = api.stdout.readline().strip()
        if not url:
            sys.exit(f"the articles API did not start (exit code {api.wait()})")
        print(f"articles API: {url}", flush=True)
        os.environ[URL_ENV] = url
        cli(["supervise", "--app", "examples.http_sync.app:app", *sys.argv[1:]])
    finally:
        api.terminate()
        api.wait()


if __name__ == "__main__":
    main()
