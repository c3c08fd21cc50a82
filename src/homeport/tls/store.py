"""The shared certificate store: the certificates every relay node serves, key sealed.

One row per kind (``account``, ``tenant``) in the ``certificates`` table of the
shared database: the chain (public), the private key **sealed** with the
secret-box key (:class:`~homeport.accounts.secretbox.SecretBox`, AES-256-GCM; the
same key file on every node), its notAfter, a ``version`` that goes up by one on
every write, and the renewal lease's fencing token it was written under.

Threats this stops:

* **A leaked database or backup** gives no private key: only the sealed bytes,
  useless without the key file, which never enters the database.
* **A row altered in the database** (another chain slipped in, a key swapped,
  the version or token rewritten to force a reload): the associated data of the
  sealed key binds it to the kind, version, fencing token and the SHA-256 of the
  exact chain, so any change makes it fail to open; :meth:`CertificateStore.load`
  then refuses the row (:class:`CertificateRefused`, logged as
  ``tls.stored_certificate_refused`` with the kind and reason, never the bytes),
  and the node keeps serving what it has. A row sealed with another key (a node
  given the wrong key file) is refused the same way.
* **A stale renewer overwriting a newer certificate** (paused past its lease):
  :meth:`CertificateStore.put` refuses, in the same transaction as the write, a
  fencing token older than the lease's current one or than the row's
  (:class:`FencingError`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from dataclasses import dataclass
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import select

from homeport.accounts.db import Database
from homeport.accounts.models import CertificateRow
from homeport.accounts.models import RenewalLease as LeaseRow
from homeport.accounts.secretbox import SecretBox, SecretBoxError
from homeport.tls.lease import LEASE_NAME

__all__ = ["CertificateRefused", "CertificateStore", "FencingError", "StoredCertificate"]

log = logging.getLogger(__name__)

_DOMAIN: Final = b"homeport certificate key v1\n"
KINDS: Final = ("account", "tenant")


class FencingError(Exception):
    """A write carrying an older fencing token than the newest seen: refused."""


class CertificateRefused(Exception):
    """A stored row that does not open or does not hold together: never served."""


@dataclass(frozen=True)
class StoredCertificate:
    kind: str
    version: int
    fence: int
    chain_pem: bytes
    key_pem: bytes
    not_after: dt.datetime

    def __repr__(self) -> str:  # never show the key
        return f"StoredCertificate({self.kind!r}, version={self.version}, fence={self.fence})"


def _associated(kind: str, version: int, fence: int, chain_pem: bytes) -> bytes:
    digest = hashlib.sha256(chain_pem).hexdigest()
    return _DOMAIN + f"{kind}\n{version}\n{fence}\n{digest}".encode()


def _leaf_matching(chain_pem: bytes, key_pem: bytes) -> x509.Certificate:
    """The chain's leaf, if ``key_pem`` is its private key; else ``ValueError``."""
    leaf = x509.load_pem_x509_certificates(chain_pem)[0]
    key = serialization.load_pem_private_key(key_pem, password=None)
    if key.public_key() != leaf.public_key():
        raise ValueError("the key does not belong to the certificate")
    return leaf


class CertificateStore:
    """The ``certificates`` table, read and written by every node (module docstring)."""

    def __init__(self, database: Database, box: SecretBox, *, node: str) -> None:
        self.database = database
        self._box = box
        self.node = node
        #: rows refused since start (tampered, wrong key, inconsistent); a metric
        self.refused = 0

    async def stamps(self) -> dict[str, tuple[int, int]]:
        """``(fence, version)`` of each stored kind: the cheap check every node polls.

        Ordered in time even across a deleted row: every write is made under a lease
        whose token only grows, and within one lease the version grows.
        """
        async with self.database.session() as s:
            rows = await s.execute(
                select(CertificateRow.kind, CertificateRow.fence, CertificateRow.version)
            )
            return {kind: (fence, version) for kind, fence, version in rows.all()}

    async def load(self, kind: str) -> StoredCertificate | None:
        """The stored certificate of ``kind``, opened and checked; None if there is none.

        Raises :class:`CertificateRefused` (and logs it) for a row that does not
        open with this node's key or whose key does not match its chain.
        """
        async with self.database.session() as s:
            row = await s.get(CertificateRow, kind)
            if row is None:
                return None
            version, fence = row.version, row.fence
            chain_pem, sealed, not_after = row.chain_pem.encode(), row.key_sealed, row.not_after
        try:
            key_pem = self._box.open(sealed, _associated(kind, version, fence, chain_pem))
            leaf = _leaf_matching(chain_pem, key_pem)
            if leaf.not_valid_after_utc != not_after:
                raise ValueError("notAfter does not match the certificate")
        except (SecretBoxError, ValueError) as exc:
            self.refused += 1
            reason = "does not open" if isinstance(exc, SecretBoxError) else str(exc)
            log.error(
                "tls.stored_certificate_refused",
                extra={"kind": kind, "version": version, "reason": reason},
            )
            raise CertificateRefused(f"stored {kind} certificate refused: {reason}") from None
        return StoredCertificate(kind, version, fence, chain_pem, key_pem, not_after)

    async def put(self, kind: str, chain_pem: bytes, key_pem: bytes, *, fence: int) -> int:
        """Store a renewed certificate under fencing token ``fence``; its new version.

        Raises :class:`FencingError` if the renewal lease or the stored row has
        seen a newer token (another node renews now, or did since), and
        ``ValueError`` if the key does not belong to the chain.
        """
        if kind not in KINDS:
            raise ValueError(f"unknown certificate kind {kind!r}")
        leaf = _leaf_matching(chain_pem, key_pem)
        async with self.database.session(write=True) as s, s.begin():
            lease = await s.scalar(
                select(LeaseRow).where(LeaseRow.name == LEASE_NAME).with_for_update()
            )
            row = await s.scalar(
                select(CertificateRow).where(CertificateRow.kind == kind).with_for_update()
            )
            newest = max(lease.token if lease is not None else 0, row.fence if row else 0)
            if fence < newest:
                log.warning(
                    "tls.stored_certificate_fenced",
                    extra={"kind": kind, "fence": fence, "newest": newest, "node": self.node},
                )
                raise FencingError(f"fencing token {fence} is older than {newest}")
            version = (row.version if row is not None else 0) + 1
            sealed = self._box.seal(key_pem, _associated(kind, version, fence, chain_pem))
            now = dt.datetime.now(dt.UTC)
            if row is None:
                row = CertificateRow(kind=kind)
                s.add(row)
            row.version, row.fence = version, fence
            row.chain_pem, row.key_sealed = chain_pem.decode(), sealed
            row.not_after, row.written_by, row.updated_at = leaf.not_valid_after_utc, self.node, now
        log.info(
            "tls.certificate_stored",
            extra={"kind": kind, "version": version, "fence": fence, "node": self.node},
        )
        return version
