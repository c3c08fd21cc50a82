"""News from a process that is not a node: ``homeport admin`` tells the relay nodes.

The operator's commands (disable or delete an account, reset its second
factor, unlink a home, link an add-on) change the database from another
process. Without this, the nodes would learn of a revocation only from their
sweep (every 5 s) and of a link only from their poll (every 2 s). Given the
cluster's settings (``--redis-url`` and ``--cluster-key-file``, on the command
line or in the relay's configuration file), the command publishes the same
sealed messages a node publishes (:mod:`homeport.relay.cluster.messages`), so
every node cuts the live traffic at once.

Threat this stops: an operator who disables a compromised account and
believes it is cut off while its WebSocket lives on for up to the sweep's
period on some node. A publish that fails changes nothing that was decided:
the database is already written, and the sweep still bounds the lag; the
caller says so to the operator.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable, Sequence
from typing import Final

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from homeport.relay.cluster.channel import CHANNEL
from homeport.relay.cluster.messages import MAX_IDS, LinkedNotice, Sealer
from homeport.relay.live import Withdrawal

__all__ = ["AnnounceFailed", "announce", "session_withdrawals"]

#: Connect and publish timeout, seconds: an operator's command does not hang on Redis.
TIMEOUT: Final = 2.0


class AnnounceFailed(ConnectionError):
    """Redis could not be reached or refused the publish; the message says why (no secret)."""


def session_withdrawals(session_ids: Iterable[int]) -> list[Withdrawal]:
    """Sessions in messages of at most :data:`MAX_IDS` ids each (none for none)."""
    ids = sorted(set(session_ids))
    return [Withdrawal.sessions(ids[i : i + MAX_IDS]) for i in range(0, len(ids), MAX_IDS)]


async def announce(redis_url: str, key: bytes, news: Sequence[Withdrawal | LinkedNotice]) -> int:
    """Publish ``news`` sealed with the cluster ``key``; how many nodes heard the last one.

    Raises :class:`AnnounceFailed` when Redis cannot take it.
    """
    sealer = Sealer(key, channel=CHANNEL)
    node = "admin-" + secrets.token_hex(6)
    client = aioredis.Redis.from_url(
        redis_url,
        socket_connect_timeout=TIMEOUT,
        socket_timeout=TIMEOUT,
        retry=Retry(NoBackoff(), 0),
    )
    heard = 0
    try:
        for item in news:
            data = sealer.seal(item, node=node, now=time.time())
            heard = int(await client.publish(CHANNEL, data))
    except (RedisError, OSError, TimeoutError) as exc:
        raise AnnounceFailed(type(exc).__name__) from None
    finally:
        await client.aclose()
    return heard
