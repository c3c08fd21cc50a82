"""The relay's settings, resolved once at start-up."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from homeport.tls.acme_settings import AcmeSettings

#: Placeholders, as in SECURITY.md, until the project has a real contact and site.
SECURITY_CONTACT = "mailto:security@homeport.example"
SECURITY_POLICY = "https://homeport.example/SECURITY.md"


@dataclass(frozen=True, slots=True)
class RelayConfig:
    data_dir: Path
    account_host: str = "homeport.localhost"
    tenant_domain: str = "home.localhost"
    listen_host: str = "127.0.0.1"
    listen_port: int = 8443
    #: Port in the URLs people see; None means the listening port.
    public_port: int | None = None
    database_url: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    server_key: Path | None = None
    #: How long a relay shutting down lets open streams finish.
    drain_seconds: float = 10.0
    #: ``modern`` (TLS 1.3 only) or ``intermediate`` (adds TLS 1.2 with ECDHE+AEAD
    #: suites only); see ``homeport.tls.context.server_context``.
    tls_profile: str = "modern"
    #: Plain-HTTP listener (``--http-listen``); None (the default) means none.  It
    #: only redirects to HTTPS on the same host (``homeport.relay.edge``).
    http_listen_host: str = "127.0.0.1"
    http_listen_port: int | None = None
    #: RFC 9116 ``security.txt`` fields (placeholders until the project has real ones;
    #: keep them in step with SECURITY.md).
    security_contact: str = SECURITY_CONTACT
    security_policy: str = SECURITY_POLICY
    #: The certificate bot (``--acme-*``, ``--dns-*``); None: no ACME, see
    #: ``homeport.tls.relay_tls``.
    acme: AcmeSettings | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def port_suffix(self) -> str:
        port = self.public_port if self.public_port is not None else self.listen_port
        return "" if port == 443 else f":{port}"

    @property
    def account_origin(self) -> str:
        return f"https://{self.account_host}{self.port_suffix}"

    def tenant_host(self, instance_id: str) -> str:
        return f"{instance_id}.{self.tenant_domain}"

    def tenant_origin(self, instance_id: str) -> str:
        return f"https://{self.tenant_host(instance_id)}{self.port_suffix}"

    @property
    def server_key_path(self) -> Path:
        return self.server_key or self.data_dir / "server-key.pem"
