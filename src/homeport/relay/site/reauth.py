"""Proving the password again, for a signed-in person about to change something sensitive.

Threat this stops: a stolen session used to guess the account's password at
full speed. The check is throttled with the sign-in counters (R-RATE).
"""

from __future__ import annotations

from aiohttp import web

from homeport.accounts.service import Accounts
from homeport.accounts.sessions import SessionInfo
from homeport.accounts.throttle import account_key, network_key, signin_keys

__all__ = ["password_again"]


async def password_again(
    accounts: Accounts, request: web.Request, current: SessionInfo, password: str
) -> float | bool:
    """``True`` if right, ``False`` if wrong, or the seconds to wait (throttled)."""
    wait = await accounts.throttle.attempt(signin_keys(current.email, request.remote))
    if wait > 0:
        return wait
    user = await accounts.users.authenticate(current.email, password)
    if user is None or user.id != current.user_id:
        return False
    net = network_key(request.remote)
    await accounts.throttle.succeeded(
        clear=[f"pw:pair:{account_key(current.email)}:{net}"], refund=[f"pw:net:{net}"]
    )
    return True
