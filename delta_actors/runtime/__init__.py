"""The processes: supervisor, actors, their pipe protocol, the worker, metrics."""
