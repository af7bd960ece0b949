"""A CPU-bound controller spread over two actor processes (see app.py)."""
