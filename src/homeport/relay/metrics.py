"""Prometheus metrics for the relay on a listener of their own (``--metrics-listen``).

What is exported is chosen so that a scrape reveals nothing about who uses the
relay: certificate expiry per served certificate (named by the account host or
the tenant wildcard, both public anyway), the number of connected tunnels and
of open proxied exchanges. No instance id, user, address or label of any
tenant is ever a label (privacy: the relay keeps metadata to a minimum).

The values are read live at scrape time by :class:`RelayCollector` into a
registry of our own, never ``prometheus_client``'s global one, so nothing else
imported into the process can add series to it.

Threat stopped: the endpoint has no authentication, so it is never on the
public TLS listener or on the account/tenant hosts; it is a separate plain
HTTP listener, off by default, answering ``GET /metrics`` only (everything
else 404, other methods 405). Operators bind it to loopback or a private
interface; a public address is logged as a warning.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import logging
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from homeport.relay.cluster.node import ClusterNode
from homeport.relay.config import RelayConfig
from homeport.relay.edge import harden_runner
from homeport.relay.hub import TunnelHub
from homeport.relay.live import LiveTraffic
from homeport.tls.acme_bot import ALERT_BELOW
from homeport.tls.served import ACCOUNT, TENANT, ServedCertificates
from homeport.tls.store import CertificateStore

__all__ = [
    "MetricsListener",
    "RelayCollector",
    "ServedExpiry",
    "cluster_gauges",
    "metrics_registry",
    "relay_metrics",
    "served_expiry",
]

log = logging.getLogger(__name__)

METRICS_PATH = "/metrics"
#: Scrapers reconnect as they please; an idle connection is not kept for long.
IDLE_TIMEOUT = 75.0


@dataclass(frozen=True, slots=True)
class ServedExpiry:
    #: the account host, or ``*.<tenant-domain>``
    name: str
    not_after: dt.datetime


class RelayCollector(Collector):
    """Reads the relay's live state at every scrape; holds no values of its own."""

    def __init__(
        self,
        certificates: Callable[[], Sequence[ServedExpiry]],
        tunnels: Callable[[], int],
        live_exchanges: Callable[[], int],
        *,
        gauges: Sequence[tuple[str, str, Callable[[], int]]] = (),
        now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        alert_below: dt.timedelta = ALERT_BELOW,
    ) -> None:
        self._certificates = certificates
        self._tunnels = tunnels
        self._live = live_exchanges
        #: More gauges, read at each scrape: (name, help, read).
        self._gauges = gauges
        self._now = now
        self._alert_below = alert_below

    def collect(self) -> Iterable[Metric]:
        expiry = GaugeMetricFamily(
            "homeport_certificate_expiry_seconds",
            "Seconds until the served certificate's notAfter (negative once expired).",
            labels=["name"],
        )
        expiring = GaugeMetricFamily(
            "homeport_certificate_expiring",
            f"1 when the served certificate has less than {self._alert_below.days} days left "
            "(the threshold of the acme.certificate_expiring warning).",
            labels=["name"],
        )
        now = self._now()
        for cert in self._certificates():
            remaining = cert.not_after - now
            expiry.add_metric([cert.name], remaining.total_seconds())
            expiring.add_metric([cert.name], 1.0 if remaining < self._alert_below else 0.0)
        yield expiry
        yield expiring
        yield GaugeMetricFamily(
            "homeport_tunnels_connected", "Add-on tunnels connected now.", value=self._tunnels()
        )
        yield GaugeMetricFamily(
            "homeport_live_exchanges",
            "Proxied requests and WebSockets open now (tenant hosts and app links).",
            value=self._live(),
        )
        for name, text, read in self._gauges:
            yield GaugeMetricFamily(name, text, value=read())


def served_expiry(served: ServedCertificates, config: RelayConfig) -> list[ServedExpiry]:
    """The certificate each kind of host is handed now (ACME, ``--tls-cert`` or dev CA).

    Without a wildcard certificate of their own, tenant hosts get the account
    host's (which then covers the wildcard), so that one is reported for both.
    """
    account = served.not_after(ACCOUNT)
    tenant = served.not_after(TENANT) or account
    found = [(config.account_host, account), (f"*.{config.tenant_domain}", tenant)]
    return [ServedExpiry(name, not_after) for name, not_after in found if not_after is not None]


def relay_metrics(
    config: RelayConfig,
    served: ServedCertificates,
    hub: TunnelHub,
    live: LiveTraffic,
    connections: Collection[object] = (),
    cluster: ClusterNode | None = None,
    store: CertificateStore | None = None,
) -> MetricsListener:
    """The listener for ``config.metrics_listen`` (which must be set)."""
    assert config.metrics_listen is not None
    collector = RelayCollector(
        lambda: served_expiry(served, config),
        lambda: sum(1 for session in hub.tunnels.values() if not session.ended),
        live.count,
        gauges=(
            (
                "homeport_tunnel_streams",
                "Streams open in the protocol, over every tunnel (a number that only grows "
                "is a leak).",
                hub.open_streams,
            ),
            (
                "homeport_tenant_connections",
                "Browser connections open on tenant and app-link hosts.",
                lambda: len(connections),
            ),
            (
                "homeport_asyncio_tasks",
                "asyncio tasks alive in the relay process (a number that only grows is a leak).",
                lambda: len(asyncio.all_tasks()),
            ),
            *(cluster_gauges(cluster) if cluster is not None else ()),
            *(certificate_gauges(store) if store is not None else ()),
        ),
    )
    host, port = config.metrics_listen
    return MetricsListener(metrics_registry(collector), host, port)


def cluster_gauges(node: ClusterNode) -> tuple[tuple[str, str, Callable[[], int]], ...]:
    """A cluster node's health: alert when the channel is down or messages are refused."""
    channel = node.channel
    return (
        (
            "homeport_cluster_channel_up",
            "1 while this node hears every revocation over Redis; 0: degraded (no caches, "
            "1 s sweep).",
            lambda: int(channel.up),
        ),
        (
            "homeport_cluster_messages_refused",
            "Messages on the revocation channel, presence records and move requests "
            "refused since start (forged, replayed, stale, malformed, or sealed with "
            "another node's key).",
            lambda: channel.refused + node.presence.refused,
        ),
    )


def certificate_gauges(store: CertificateStore) -> tuple[tuple[str, str, Callable[[], int]], ...]:
    """The shared certificate store as this node sees it: alert when rows are refused."""
    return (
        (
            "homeport_certificate_store_refused",
            "Stored certificate rows this node refused to serve since start (altered in the "
            "database, or this node's secret-box key differs from the renewer's).",
            lambda: store.refused,
        ),
    )


def metrics_registry(collector: Collector) -> CollectorRegistry:
    """A registry of our own holding only ``collector`` (no process/platform defaults)."""
    # No auto_describe: it would call collect() at registration, before the relay runs.
    registry = CollectorRegistry()
    registry.register(collector)
    return registry


HEALTH_PATH = "/healthz"


class MetricsListener:
    """Plain HTTP on its own address: ``GET /metrics``, and ``GET /healthz`` for a
    load balancer's health check (200 ``up``; 503 ``draining`` once the node is
    being stopped, so it leaves the rotation before its add-ons are moved)."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self.registry = registry
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None
        #: Whether this node takes new connections (the relay sets it while draining).
        self.accepting: Callable[[], bool] = lambda: True

    async def start(self) -> None:
        app = web.Application()
        # HEAD is left out on purpose: GET only, anything else is 405.
        app.router.add_get(METRICS_PATH, self._metrics, allow_head=False)
        app.router.add_get(HEALTH_PATH, self._health, allow_head=False)
        self._runner = web.AppRunner(
            app, access_log=None, keepalive_timeout=IDLE_TIMEOUT, shutdown_timeout=1.0
        )
        await self._runner.setup()
        harden_runner(self._runner)  # no Server banner, not even on parser errors
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if not _private(self.host):
            log.warning(
                "metrics.listen_not_private",
                extra={"host": self.host, "detail": "bind --metrics-listen to loopback or a LAN"},
            )
        log.info("metrics.listening", extra={"host": self.host, "port": self.bound_port})

    @property
    def bound_port(self) -> int:
        assert self._runner is not None
        for address in self._runner.addresses:
            return int(address[1])
        raise RuntimeError("metrics listener is not listening")

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _health(self, request: web.Request) -> web.Response:
        if self.accepting():
            return web.Response(text="up\n")
        return web.Response(status=503, text="draining\n")

    async def _metrics(self, request: web.Request) -> web.Response:
        # Collected on the event loop thread, so the hub's and gate's dicts hold still.
        return web.Response(
            body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )


def _private(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False  # a host name: cannot tell, so say so
    return not address.is_unspecified and (address.is_loopback or address.is_private)
