"""HTTP-01 answers every relay node can give, not only the one that placed the order.

In a cluster the CA's validation request for ``/.well-known/acme-challenge/<token>``
reaches whichever node the load balancer picks, while only the lease holder
(:mod:`homeport.tls.lease`) ordered. So while a challenge is validated its key
authorization is also a row in the shared database (``acme_challenges``), and the
port-80 listener of every node looks there when it does not hold the token itself.

Key authorizations are not secret (the CA fetches them over plain HTTP; RFC 8555
§8.3), so they are stored in clear. What still holds (R-ACME-07): a token answers
only while its challenge is being validated (the row is deleted in
:meth:`SharedHttp01Responder.cleanup`, and ignored after :data:`LIFETIME` if a node
died before cleaning up), and only the exact token path answers.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Coroutine
from typing import Any, Final

from acme import challenges
from josepy.jwk import JWK
from sqlalchemy import delete, select

from homeport.accounts.db import DATABASE_ERRORS, Database
from homeport.accounts.models import AcmeChallenge
from homeport.tls.acme_bot import Http01Responder, is_acme_token

__all__ = ["LIFETIME", "SharedHttp01Responder"]

log = logging.getLogger(__name__)

#: A row left by a node that died mid-validation answers no longer than this.
LIFETIME: Final = dt.timedelta(minutes=10)
#: How long the bot's worker thread waits for the database on each write.
WRITE_TIMEOUT: Final = 15.0


class SharedHttp01Responder(Http01Responder):
    """An :class:`Http01Responder` whose tokens every node sharing ``database`` answers."""

    def __init__(self, database: Database) -> None:
        super().__init__()
        self.database = database
        #: the relay's event loop; set by :meth:`bind` before the bot runs
        self.loop: asyncio.AbstractEventLoop | None = None
        self._shared: list[str] = []

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    # ---------------------------------------- the bot's side (worker thread)

    def prepare(
        self, name: str, challenge: challenges.KeyAuthorizationChallenge, account_key: JWK
    ) -> None:
        super().prepare(name, challenge, account_key)
        token = challenge.encode("token")
        self._shared.append(token)
        self._run(self._put(token, challenge.key_authorization(account_key)))

    def cleanup(self) -> None:
        tokens, self._shared = self._shared, []
        try:
            if tokens:
                self._run(self._delete(tokens))
        except Exception as exc:  # relay stopping, database away: the rows expire by themselves
            log.warning("acme.challenge_cleanup_failed", extra={"error": type(exc).__name__})
        finally:
            super().cleanup()

    def _run(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` on the relay's loop from the bot's worker thread, and wait for it."""
        if self.loop is None or self.loop.is_closed():
            work.close()
            raise RuntimeError("the relay's event loop is not running")
        asyncio.run_coroutine_threadsafe(work, self.loop).result(WRITE_TIMEOUT)

    async def _put(self, token: str, key_authorization: str) -> None:
        now = dt.datetime.now(dt.UTC)
        async with self.database.session(write=True) as s, s.begin():
            await s.execute(delete(AcmeChallenge).where(AcmeChallenge.expires_at <= now))
            await s.merge(
                AcmeChallenge(
                    token=token, key_authorization=key_authorization, expires_at=now + LIFETIME
                )
            )

    async def _delete(self, tokens: list[str]) -> None:
        async with self.database.session(write=True) as s, s.begin():
            await s.execute(delete(AcmeChallenge).where(AcmeChallenge.token.in_(tokens)))

    # ------------------------------------------- the port-80 listener's side

    async def lookup(self, token: str) -> str | None:
        """This node's own token, else one another node is validating now."""
        if not is_acme_token(token):
            return None
        mine = self.get(token)
        if mine is not None:
            return mine
        try:
            async with self.database.session() as s:
                answer: str | None = await s.scalar(
                    select(AcmeChallenge.key_authorization).where(
                        AcmeChallenge.token == token,
                        AcmeChallenge.expires_at > dt.datetime.now(dt.UTC),
                    )
                )
        except DATABASE_ERRORS as exc:
            log.warning("acme.challenge_lookup_failed", extra={"error": type(exc).__name__})
            return None
        return answer
