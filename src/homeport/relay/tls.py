"""Everything TLS the relay process owns: the listener's context, the bot, renewal.

The relay asks this object for its SSL context and starts/stops it; nothing
else in the relay knows about ACME.

* Without ``--acme-directory``: the operator's ``--tls-cert``/``--tls-key``
  (checked: not expired, valid for the account host and the tenant wildcard,
  key matches, no root in the chain) or the development CA's certificate.
* With it: the account host's certificate by HTTP-01 or TLS-ALPN-01, the
  tenant wildcard ``*.<tenant-domain>`` by DNS-01 (``--dns-server``), each
  with its own key; both in ``<data-dir>/acme/`` (keys 0600), selected by SNI.
  Until the first issuance (and if issuance keeps failing) the relay serves a
  development-CA placeholder, so it can listen, which TLS-ALPN-01 needs.
  The certificates are also kept in the database (``homeport.tls.store``, keys
  sealed with the secret-box key) and renewed by one node at a time
  (``homeport.tls.lease``): on a single relay that is its own database; on a
  cluster every node serves what any of them renewed, without a restart
  (``homeport.tls.keeper``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import ssl
from collections.abc import Callable
from pathlib import Path

from homeport.accounts.db import Database
from homeport.accounts.secretbox import SecretBox
from homeport.relay.cluster.certificates import CertificateNotices
from homeport.relay.cluster.node import load_cluster_key
from homeport.relay.config import RelayConfig
from homeport.tls.acme_bot import AcmeBot, ChallengeSolver, Http01Responder, Issued
from homeport.tls.acme_settings import AcmeSettings
from homeport.tls.alpn import TlsAlpn01Responder
from homeport.tls.caa import caa_records
from homeport.tls.check import CertificateProblem, check_certificate_files
from homeport.tls.dns01 import Rfc2136Solver, load_tsig_key
from homeport.tls.keeper import CertificateKeeper, Managed
from homeport.tls.lease import RenewalLease
from homeport.tls.served import ACCOUNT, TENANT, CertPair, ServedCertificates
from homeport.tls.shared_http01 import SharedHttp01Responder
from homeport.tls.store import CertificateStore

__all__ = ["ACME_DIR", "RelayTls"]

log = logging.getLogger(__name__)

ACME_DIR = "acme"


def node_name() -> str:
    """This process in the lease row and the logs: host name and a random tail (not secret)."""
    host = "".join(c for c in socket.gethostname() if c.isascii() and (c.isalnum() or c in "-."))[
        :40
    ]
    return f"{host or 'relay'}-{secrets.token_hex(4)}"


class RelayTls:
    def __init__(
        self,
        config: RelayConfig,
        placeholder: Callable[[], CertPair],
        *,
        database: Database | None = None,
        secret_box: SecretBox | None = None,
    ) -> None:
        """``placeholder``: a certificate for every served name (the development CA's);
        ``database`` and ``secret_box``: where ACME certificates are shared (sealed)."""
        self.config = config
        self.node = node_name()
        self.store: CertificateStore | None = None
        #: a cluster node's notices to the others when it stored a certificate
        self.notices: CertificateNotices | None = None
        self.http01: Http01Responder | None = None
        self.keeper: CertificateKeeper | None = None
        self._task: asyncio.Task[None] | None = None
        account_names = [config.account_host]
        wildcard = f"*.{config.tenant_domain}"
        acme = config.acme
        if acme is None:
            pair = placeholder()
            self.served = ServedCertificates(
                pair,
                account_names=[*account_names, wildcard],
                tenant_domain=config.tenant_domain,
                profile=config.tls_profile,
            )
            self._operator_files = (pair, _mtimes(pair)) if config.tls_cert else None
            return
        self._operator_files = None
        solver: ChallengeSolver
        alpn: TlsAlpn01Responder | None = None
        if acme.challenge == "tls-alpn-01":
            solver = alpn = TlsAlpn01Responder()
            if config.redis_url:
                # Its challenge certificate is in the ordering node's memory only.
                log.warning(
                    "acme.tls_alpn_in_cluster",
                    extra={"detail": "the CA must reach the node that orders; use http-01"},
                )
        elif database is not None:
            # Any node's port 80 answers (the CA may reach any node of a cluster).
            solver = self.http01 = SharedHttp01Responder(database)
        else:
            solver = self.http01 = Http01Responder()
        root = config.data_dir / ACME_DIR
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        account_bot = self._bot(acme, root / "account-host", account_names, solver)
        managed = [Managed(ACCOUNT, account_bot)]
        tenant_bot = None
        if acme.dns01:
            tenant_bot = self._bot(acme, root / "tenant-wildcard", [wildcard], _dns_solver(acme))
            managed.append(Managed(TENANT, tenant_bot))
        else:
            log.warning("acme.no_dns01", extra={"detail": "tenant hosts keep the placeholder"})
        self._placeholder = placeholder
        self._fallback: CertPair | None = None
        self.served = ServedCertificates(
            self._initial(account_bot),
            account_names=account_names,
            tenant_domain=config.tenant_domain,
            tenant=self._initial(tenant_bot),
            profile=config.tls_profile,
            alpn=alpn,
        )
        lease = None
        if database is not None and secret_box is not None:
            self.store = CertificateStore(database, secret_box, node=self.node)
            lease = RenewalLease(database, self.node)
        self.keeper = CertificateKeeper(
            self.served, managed, on_renewed=self._suggest_caa, store=self.store, lease=lease
        )
        if self.store is not None and config.redis_url and config.cluster_key_file:
            self.notices = CertificateNotices(
                config.redis_url,
                load_cluster_key(config.cluster_key_file),
                node=self.node,
                on_notice=self.keeper.wake,
            )
            self.keeper.on_stored = self.notices.publish
        self._caa_account: str | None = None

    def _suggest_caa(self, item: Managed, issued: Issued) -> None:
        """Log the CAA records binding our names to this ACME account, once per account."""
        if issued.account_url == self._caa_account:
            return
        self._caa_account = issued.account_url
        try:
            records = caa_records(
                self.config.account_host, self.config.tenant_domain, issued.account_url
            )
        except ValueError:
            return
        log.info("acme.caa_records", extra={"records": records})

    def _initial(self, bot: AcmeBot | None) -> CertPair:
        """The bot's stored certificate if it is fit to serve, else the placeholder."""
        if bot is not None:
            try:
                check_certificate_files(bot.cert_path, bot.key_path, bot.names)
                return CertPair(bot.cert_path, bot.key_path)
            except CertificateProblem as exc:
                if bot.cert_path.exists():
                    log.warning("acme.stored_certificate_unusable", extra={"error": str(exc)})
        if self._fallback is None:
            self._fallback = self._placeholder()
        return self._fallback

    def _bot(
        self, acme: AcmeSettings, cert_dir: Path, names: list[str], solver: ChallengeSolver
    ) -> AcmeBot:
        return AcmeBot(
            acme.directory,
            self.config.data_dir / ACME_DIR / "account.key",
            cert_dir,
            names,
            solver,
            acme.ca_file,
            email=acme.email,
        )

    # --------------------------------------------------------------- API

    @property
    def context(self) -> ssl.SSLContext:
        return self.served.context

    @property
    def cert(self) -> Path:
        """The account host's certificate file now served."""
        pair = self.served.pair(ACCOUNT)
        assert pair is not None
        return pair.cert

    @property
    def key(self) -> Path:
        pair = self.served.pair(ACCOUNT)
        assert pair is not None
        return pair.key

    def account_cert_sha256(self) -> bytes:
        return self.served.account_cert_sha256()

    #: how often operator-supplied certificate files are checked for replacement
    watch_interval = 60.0

    async def start(self) -> None:
        """Start the renewal loop (after the listeners are up: TLS-ALPN-01 needs them).

        With operator-supplied files instead, watch them: an external ACME client
        (certbot, lego, acme.sh) replacing them is picked up without a restart.
        """
        if self._task is not None:
            return
        if self.keeper is not None:
            if isinstance(self.http01, SharedHttp01Responder):
                self.http01.bind(asyncio.get_running_loop())
            if self.notices is not None:
                self.notices.start()
            self._task = asyncio.create_task(self.keeper.run(), name="acme-keeper")
        elif self._operator_files is not None:
            self._task = asyncio.create_task(self._watch_files(), name="tls-file-watch")

    async def _watch_files(self) -> None:
        while True:
            await asyncio.sleep(self.watch_interval)
            self.reload_operator_files()

    def reload_operator_files(self) -> bool:
        """Serve the operator's files again if they changed and are fit; True if reloaded."""
        if self._operator_files is None:
            return False
        pair, seen = self._operator_files
        try:
            now = _mtimes(pair)
        except OSError as exc:  # mid-replacement: try again next time
            log.warning("tls.certificate_files_unreadable", extra={"error": str(exc)})
            return False
        if now == seen:
            return False
        self._operator_files = (pair, now)
        try:
            self.served.reload(ACCOUNT, pair)
        except (CertificateProblem, ssl.SSLError, OSError) as exc:
            # Keep serving the old chain; a half-written or wrong file must not take us down.
            log.error("tls.certificate_reload_refused", extra={"error": str(exc)})
            return False
        return True

    async def stop(self) -> None:
        if self.keeper is not None:
            for item in self.keeper.managed:
                item.bot.cancel()  # a worker thread mid-issuance must not hold up shutdown
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.notices is not None:
            await self.notices.stop()


def _dns_solver(acme: AcmeSettings) -> Rfc2136Solver:
    assert acme.dns_server is not None
    assert acme.dns_tsig_key_file is not None
    return Rfc2136Solver(
        acme.dns_server, acme.dns_port, load_tsig_key(acme.dns_tsig_key_file), zone=acme.dns_zone
    )


def _mtimes(pair: CertPair) -> tuple[int, int]:
    return pair.cert.stat().st_mtime_ns, pair.key.stat().st_mtime_ns
