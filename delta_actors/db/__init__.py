"""The one PostgreSQL seam: connections, error translation, statements, migrations.

The statements live in one module per table (`job_sql`, `resource_sql`, `actor_sql`,
`leader_sql`, `event_sql`, `migration_sql`) and one for status reads (`status_sql`).
They are `LiteralString` constants named after the function that runs them; nothing there
is ever formatted with user input. Arrays are passed as single parameters and expanded
with `unnest`, so a batch of any size is one statement and one round trip.
"""
