"""The web console: every resource, actions on a filter, live updates.

`create_app(dsn, read_only=False, token=None)` is the console as an ASGI app (Starlette);
`delta-actors web` serves it with uvicorn (`serve`). Needs the `web` extra:
`pip install 'delta-actors[web]'`.

Modules: `app` (the app and its pages), `actions` (every POST), `live` (server-sent
events), `reads` (what pages read, bounded), `security` (token, CSRF, binding),
`console` (shared state, templates), `views` (rendering, the filter of a URL), `server`
(the command's uvicorn). Pages and their scripts are served from the package
(templates/, static/): no build step, nothing fetched from another site.
"""

from __future__ import annotations

from delta_actors.web.app import create_app

__all__ = ["create_app"]
