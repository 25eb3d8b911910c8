"""The registry's SQL storage (SQLAlchemy 2 Core + Alembic), on SQLite or PostgreSQL.

``Database.open(url)`` connects and migrates; ``with db.transaction() as tx:`` is one unit of work
whose methods take and return core values. Driver errors never leave this package: they are
``ConflictError`` / ``NotFoundError`` / ``BackendError`` with stable reasons.
"""

from iotrust.adapters.sql.store import Database, Tx

__all__ = ["Database", "Tx"]
