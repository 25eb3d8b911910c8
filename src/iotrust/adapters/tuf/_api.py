"""The python-tuf and securesystemslib names this package uses, imported in one place.

``tuf.api.metadata`` is python-tuf's documented public module, but it re-exports its classes
from ``tuf.api._payload`` without ``__all__`` (so does ``securesystemslib.signer``), which strict
mypy reads as "not exported"; the ``type: ignore`` comments below say that and nothing else.
"""

from securesystemslib.signer import (  # type: ignore[attr-defined]
    Key,
    SecretsHandler,
    Signature,
    SSlibKey,
)
from securesystemslib.signer import Signer as SslibSigner  # type: ignore[attr-defined]
from tuf.api.metadata import (  # type: ignore[attr-defined]
    DelegatedRole,
    Delegations,
    Metadata,
    MetaFile,
    Root,
    Signed,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)

__all__ = ["DelegatedRole", "Delegations", "Key", "MetaFile", "Metadata", "Root",
           "SSlibKey", "SecretsHandler", "Signature", "Signed", "Snapshot", "SslibSigner",
           "TargetFile", "Targets", "Timestamp"]
