"""Alembic environment for the iotrust registry.

Normally run in-process by :meth:`iotrust.adapters.sql.store.Database.upgrade`, which hands over an
open connection in ``config.attributes["connection"]``. For developers writing a new migration,
``alembic -x url=sqlite:///dev.db revision --autogenerate -m ...`` with ``script_location`` pointing
here also works. On PostgreSQL the migration takes a transaction-level advisory lock so that
several workers starting at once migrate exactly once.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine, text

from iotrust.adapters.sql.schema import metadata

_MIGRATION_LOCK = 0x10_7257  # arbitrary constant shared by every iotrust process


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        transactional_ddl=True,
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK})
        context.run_migrations()


def _main() -> None:
    config = context.config
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option(
        "sqlalchemy.url")
    if not url:
        raise RuntimeError("no database: pass -x url=... or set sqlalchemy.url")
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            _run(conn)
    finally:
        engine.dispose()


_main()
