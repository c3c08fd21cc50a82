"""Certificate notices between nodes (``relay/cluster/certificates.py``), on a real Redis.

A genuine notice wakes the other node's keeper; a forged, altered, stale or
malformed one is refused (counted and logged with its reason) and wakes nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

import pytest
import redis.asyncio as aioredis
from redis_server import RedisServer

from homeport.relay.cluster.certificates import CHANNEL, CertificateNotices, NoticeSealer
from homeport.relay.cluster.messages import RefusedMessage

KEY = b"test cluster key: 0123456789abcdefghijklmnopqrstuvwxyz"
OTHER_KEY = b"another cluster key: 0123456789abcdefghijklmnopqrstuvw"


def test_sealer_refuses_what_it_did_not_seal() -> None:
    sealer = NoticeSealer(KEY)
    now = time.time()
    good = sealer.seal("account", 3, node="node-a", now=now)
    assert sealer.open(good, now) == ("node-a", "account", 3)
    prefix, mac, payload = good.split(b":", 2)
    body = json.loads(payload)
    forged = [
        NoticeSealer(OTHER_KEY).seal("account", 3, node="node-a", now=now),  # wrong key
        good.replace(b'"version":3', b'"version":4'),  # altered after sealing
        prefix + b":" + b"0" * 64 + b":" + payload,
        b"hc1:" + mac,
        good + b"x" * 600,  # too large
        sealer.seal("account", 3, node="node-a", now=now - 120),  # stale
        sealer.seal("certs", 3, node="node-a", now=now),  # unknown kind
        sealer.seal("account", 0, node="node-a", now=now),
        sealer.seal("account", 3, node="bad node!", now=now),
    ]
    for data in forged:
        with pytest.raises(RefusedMessage):
            sealer.open(data, now)
    assert body["kind"] == "account"


async def test_a_genuine_notice_wakes_a_forged_one_does_not(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    woken: list[str] = []
    a = CertificateNotices(redis_server.url, KEY, node="node-a", on_notice=lambda: None)
    b = CertificateNotices(
        redis_server.url, KEY, node="node-b", on_notice=lambda: woken.append("b")
    )
    b.start()
    try:
        await asyncio.wait_for(b.subscribed.wait(), 10)
        assert woken == ["b"]  # on subscribing: a notice may have been missed
        client = aioredis.Redis.from_url(redis_server.url)
        try:
            forged = NoticeSealer(OTHER_KEY).seal("account", 9, node="node-x", now=time.time())
            await client.publish(CHANNEL, forged)
            await client.publish(CHANNEL, b"hc1:garbage")
            async with asyncio.timeout(10):
                while b.refused < 2:
                    await asyncio.sleep(0.05)
            assert woken == ["b"]
            a.publish("account", 2)
            async with asyncio.timeout(10):
                while len(woken) < 2:
                    await asyncio.sleep(0.05)
        finally:
            await client.aclose()
        refused = [r for r in caplog.records if r.message == "cluster.certificate_notice_refused"]
        assert [r.reason for r in refused] == ["bad signature", "unknown format"]  # type: ignore[attr-defined]
    finally:
        await a.stop()
        await b.stop()
