"""Using a code or token once: the one place the "only the first caller wins" update runs.

Threat this stops: a code redeemed twice (a replayed link, two tabs, an
attacker racing the owner). Every single-use secret (link codes, hand-off
codes, e-mailed sign-in codes and their "not me" alerts, reset links,
recovery codes, pending sign-ins, sign-up links, invitations, OpenID flows)
is used up by one conditional statement inside a write transaction: an
``UPDATE … WHERE <still unused>`` (most rows: :meth:`SingleUse.use
<homeport.accounts.models.SingleUse.use>`), or a ``DELETE`` of the row.
The database decides the winner: on SQLite the write transaction holds the
database lock (``BEGIN IMMEDIATE``); on PostgreSQL a concurrent ``UPDATE``
waits for the row lock and then re-checks its ``WHERE`` against the
committed row. Exactly one caller sees one row changed; everyone else sees
none (``tests/accounts/test_single_use.py`` races them on both backends).
"""

from __future__ import annotations

from typing import cast

from sqlalchemy import CursorResult, Delete, Update
from sqlalchemy.ext.asyncio import AsyncSession

__all__ = ["consume_once", "rowcount"]


def rowcount(result: object) -> int:
    """Rows an ``UPDATE`` or ``DELETE`` changed."""
    return int(cast(CursorResult[object], result).rowcount or 0)


async def consume_once(s: AsyncSession, statement: Update | Delete) -> bool:
    """Run ``statement`` (matching at most one row); ``True`` for the one caller it changed.

    Call it inside the write transaction that acts on the result, so the use
    and what it allows commit or roll back together.
    """
    return rowcount(await s.execute(statement)) == 1
