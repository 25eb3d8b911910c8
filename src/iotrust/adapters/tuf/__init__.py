"""TUF repositories on disk, built with python-tuf's Metadata API (``tuf.api.metadata``).

* :mod:`.signer` — :class:`~.signer.PortSigner`, our key stores as ``securesystemslib`` signers;
* :mod:`.keyring` — which keys sign which role (``data/tuf/keys.json``);
* :mod:`.repository` — :class:`~.repository.ImageRepository` (root, targets, snapshot,
  timestamp, ``fw-<hw>`` and ``config`` delegated roles, consistent snapshots);
* :mod:`.director` — :class:`~.director.Director`, per-device targets (Uptane style).

The unstable ``tuf.repository`` helpers are not used. Nothing here decides what is released to
whom, and nothing here talks HTTP.
"""
