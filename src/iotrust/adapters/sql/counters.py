"""The :class:`~iotrust.ports.CounterStore` on the registry database (SQLite or PostgreSQL).

Each call is one transaction of :class:`~iotrust.adapters.sql.store.Database`: a batch flush is
one commit whatever its size, a reservation is one (small) commit. Driver failures surface as
:class:`~iotrust.errors.BackendError` through the store's seam. The write strategy (when to
flush, when to reserve) is not decided here but in :mod:`iotrust.services.counters`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from iotrust.adapters.sql.store import Database
from iotrust.ports import MessageCounter


class SqlCounterStore:
    """Message-counter states in the ``message_counters`` table."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def load_counters(self, device_id: str) -> MessageCounter | None:
        """The stored state of one device, or ``None``."""
        with self._db.transaction(readonly=True) as tx:
            return tx.load_message_counter(device_id)

    def save_counters(self, states: Sequence[MessageCounter], at: datetime) -> None:
        """Write many devices' states in one transaction (one commit)."""
        if not states:
            return
        with self._db.transaction() as tx:
            tx.save_message_counters(states, at)

    def reserve(self, state: MessageCounter, at: datetime) -> None:
        """Durably write one device's state with its new reservation (one commit)."""
        if state.reserved is None:
            raise TypeError("a reservation needs a ceiling")
        with self._db.transaction() as tx:
            tx.save_message_counters([state], at)
