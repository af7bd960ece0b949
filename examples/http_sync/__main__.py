"""One command: serve the example API, then run `delta-actors supervise` on this app.

python -m examples.http_sync [supervise options, e.g. --dsn URL]
"""

from __future__ import annotations

import os
import sys

from delta_actors.cli import main
from examples.http_sync.api import Store, serve

server = serve(Store())
host, port = server.server_address[:2]
os.environ["HTTP_SYNC_API"] = f"http://{host}:{port}"
print(f"example API on {os.environ['HTTP_SYNC_API']}/products", file=sys.stderr, flush=True)
main(["supervise", "--app", "examples.http_sync.app:app", *sys.argv[1:]])
