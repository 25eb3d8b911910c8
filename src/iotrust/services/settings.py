"""Where a trust domain lives on disk and how its database is reached.

The embedded default is one data folder: ``iotrust.db`` (SQLite, WAL), ``keys/`` (CA keys, encrypted
PEM unless they live in a PKCS#11 token), ``crl/`` (the published CRLs) and ``ca/`` (certificates
to hand out). ``IOTRUST_DATABASE_URL`` points the registry at PostgreSQL instead.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_DATA = Path("data")


@dataclass(frozen=True, slots=True)
class Settings:
    """Paths and URLs of one trust domain deployment."""

    data_dir: Path
    database_url: str

    @classmethod
    def from_environment(
        cls, data_dir: Path | None = None, database_url: str | None = None
    ) -> Settings:
        """Resolve settings from arguments, then ``IOTRUST_DATA`` / ``IOTRUST_DATABASE_URL``."""
        data = Path(data_dir or os.environ.get("IOTRUST_DATA") or DEFAULT_DATA).absolute()
        default = f"sqlite:///{data / 'iotrust.db'}"
        url = database_url or os.environ.get("IOTRUST_DATABASE_URL") or default
        return cls(data_dir=data, database_url=url)

    @property
    def keys_dir(self) -> Path:
        """Encrypted CA keys."""
        return self.data_dir / "keys"

    @property
    def crl_dir(self) -> Path:
        """Published CRLs, one per issuing CA."""
        return self.data_dir / "crl"

    @property
    def ca_dir(self) -> Path:
        """CA certificates as PEM files (root, issuing, bundle)."""
        return self.data_dir / "ca"

    @property
    def anchor_file(self) -> Path:
        """The exported event-log head (``seq:hash``), refreshed by ``iotrust log anchor``."""
        return self.data_dir / "event-log.anchor"
