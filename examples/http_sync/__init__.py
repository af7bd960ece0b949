"""Sync from a paginated HTTP API that the example serves itself (see README in app.py)."""
