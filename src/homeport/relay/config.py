"""The relay's settings, resolved once at start-up."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from homeport.accounts.identifiers import is_instance_id
from homeport.mail.settings import SmtpSettings
from homeport.relay.oidc_settings import OidcProvider
from homeport.tls.acme_settings import AcmeSettings
from homeport.tls.proxy_listener import IPNetwork

#: Placeholders, as in SECURITY.md, until the project has a real contact and site.
SECURITY_CONTACT = "mailto:security@homeport.example"
SECURITY_POLICY = "https://homeport.example/SECURITY.md"
#: Default request-body cap: above the backups of all but the largest installs.
DEFAULT_MAX_BODY = 16 * 1024**3


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
    #: Prometheus ``GET /metrics`` on its own plain-HTTP ``(host, port)``
    #: (``--metrics-listen``, ``homeport.relay.metrics``); None (the default): off.
    metrics_listen: tuple[str, int] | None = None
    #: RFC 9116 ``security.txt`` fields (placeholders until the project has real ones;
    #: keep them in step with SECURITY.md).
    security_contact: str = SECURITY_CONTACT
    security_policy: str = SECURITY_POLICY
    #: Google / Apple / generic OpenID sign-in (``homeport.relay.oidc_settings``); none by default.
    oidc_providers: tuple[OidcProvider, ...] = ()
    #: Keepalive on each add-on's tunnel: a ping every interval; no pong for
    #: interval + timeout declares the link dead (tests shorten both).
    tunnel_ping_interval: float = 30.0
    tunnel_ping_timeout: float = 15.0
    #: How often an add-on waiting for its link is checked against the database.
    #: A link made in this process wakes it at once; the poll finds links made by
    #: another process (``homeport admin link``).
    link_poll_seconds: float = 2.0
    #: How long an owner action (CONTROL) may run on after its tunnel closed.
    control_grace_seconds: float = 5.0
    #: Edge limits on tenant hosts (``homeport.relay.limits``, R-MT-11); 0 = no limit.
    #: Request bodies: large enough for Home Assistant backups.
    max_body_bytes: int = DEFAULT_MAX_BODY
    #: Concurrent requests + WebSockets per signed-in home, and per client address.
    tenant_max_requests: int = 256
    client_max_requests: int = 512
    #: Bytes per second per home and direction (token bucket), and its burst.
    tenant_bandwidth: int = 0
    tenant_burst: int = 4 * 1024 * 1024
    #: Integrations a home's owner let past the gate (webhooks, voice assistants;
    #: ``homeport.relay.integrations``), per home: calls per second (token bucket)
    #: and the burst, open calls at once, and the request-body cap.  0 = no limit.
    integration_rate: float = 2.0
    integration_burst: int = 60
    integration_max_requests: int = 16
    integration_max_body: int = 1024 * 1024
    #: Slow bodies (R-MT-14, ``homeport.relay.limits``); 0 = off.  On tenant hosts a
    #: request body must move at least ``upload_min_bytes`` per ``upload_window``
    #: seconds spent waiting for the client (about 550 bytes/s by default).
    upload_min_bytes: int = 16 * 1024
    upload_window: float = 30.0
    #: On the account site a whole request body must arrive within this many seconds
    #: (its forms are a few KiB), and one client address (IPv6: /64) may have at most
    #: ``account_max_requests`` requests open there at once.
    account_body_seconds: float = 10.0
    account_max_requests: int = 32
    #: The certificate bot (``--acme-*``, ``--dns-*``); None: no ACME, see
    #: ``homeport.relay.tls``.
    acme: AcmeSettings | None = None
    extra: dict[str, str] = field(default_factory=dict)
    #: Outgoing mail (``--smtp-*``); None: no SMTP, so the mail features are off.
    smtp: SmtpSettings | None = None
    #: ``homeport dev`` only: without SMTP, print mails to the console instead.
    dev_console_mail: bool = False
    #: Public sign-up (``--signup open``); needs mail. Off by default.
    signup: bool = False
    #: Breached-password check of new passwords (``--breached-passwords-url``): the
    #: base URL of a range API of Have I Been Pwned's shape; None (the default): off.
    breached_passwords_url: str | None = None
    #: Seconds the whole check may take before the password is let through (fail open).
    breached_passwords_timeout: float = 3.0
    #: One node of several (``--redis-url``, ``homeport.relay.cluster``): the Redis
    #: that carries revocations between nodes, and the file of the key that seals
    #: them (the same on every node).  None (the default): a single relay.
    redis_url: str | None = None
    cluster_key_file: Path | None = None
    #: A cluster node's name (``--node-name``); its id adds a random suffix per process.
    node_name: str = "node"
    #: A cluster node being stopped says "draining" on /healthz this long before it
    #: moves its add-ons (the load balancer's fall x inter, 2 x 500 ms, and a margin).
    drain_notice_seconds: float = 1.5
    #: Behind HAProxy (``--proxy-protocol-from``): connections from these networks
    #: start with a PROXY v2 header naming the client, and no others are accepted
    #: on the TLS port (``homeport.tls.proxy_listener``).  Empty (the default): off.
    proxy_protocol_from: tuple[IPNetwork, ...] = ()

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

    def instance_for_host(self, name: str | None) -> str | None:
        """The instance id a tenant name ``<instance-id>.<tenant-domain>`` names, else None."""
        if name is None:
            return None
        label, dot, domain = name.lower().rstrip(".").partition(".")
        if not dot or domain != self.tenant_domain or not is_instance_id(label):
            return None
        return label

    @property
    def server_key_path(self) -> Path:
        return self.server_key or self.data_dir / "server-key.pem"


def is_local_name(name: str) -> bool:
    """``localhost`` and ``*.localhost``: names every resolver keeps on this machine
    (RFC 6761 §6.3), the only ones the development CA may serve."""
    name = name.lower().rstrip(".")
    return name == "localhost" or name.endswith(".localhost")
