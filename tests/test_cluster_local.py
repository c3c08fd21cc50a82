"""``homeport cluster``'s node command line (homeport.cluster_local.run.node_options).

The test suite's cluster (tests/support/cluster.py) starts its nodes with the
same builder, so what is checked here is what both run.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from homeport.cli import build_parser, relay_config
from homeport.cluster_local.run import node_options


def test_the_node_options_make_a_cluster_node_behind_haproxy(tmp_path: Path) -> None:
    files = {name: tmp_path / name for name in ("cluster.key", "server-key.pem", "c.pem", "k.pem")}
    files["cluster.key"].write_text("k" * 64 + "\n")
    argv = node_options(
        "node2",
        public_port=8443,
        redis_url="redis://127.0.0.1:6390/0",
        health_port=9102,
        cluster_key=files["cluster.key"],
        server_key=files["server-key.pem"],
        tls_cert=files["c.pem"],
        tls_key=files["k.pem"],
    )
    args = build_parser().parse_args(["relay", "--data-dir", str(tmp_path / "node2"), *argv])
    config = relay_config(args)
    assert (config.node_name, config.public_port) == ("node2", 8443)
    assert (config.redis_url, config.cluster_key_file) == (
        "redis://127.0.0.1:6390/0",
        files["cluster.key"],
    )
    assert config.metrics_listen == ("127.0.0.1", 9102)  # HAProxy's health check
    assert config.proxy_protocol_from == (ipaddress.ip_network("127.0.0.1/32"),)
    assert (config.tls_cert, config.tls_key, config.server_key) == (
        files["c.pem"],
        files["k.pem"],
        files["server-key.pem"],
    )
