"""The one PostgreSQL seam: connections, error translation, statements, migrations."""
