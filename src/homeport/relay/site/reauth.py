"""Proving it is still the account's owner, for a signed-in person about to change something
sensitive: the password again, or a current authenticator code.

Threats this stops: someone at an unlocked, signed-in browser (or holding a
stolen session) changing the account's address, deleting it or similar; and
that session used to guess the password or codes at full speed. Both checks
are throttled like a sign-in (R-RATE).
"""

from __future__ import annotations

from aiohttp import web

from homeport.accounts.service import Accounts
from homeport.accounts.sessions import SessionInfo
from homeport.accounts.throttle import account_key, network_key, signin_keys

__all__ = ["password_again", "password_or_code"]


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


async def password_or_code(
    accounts: Accounts, request: web.Request, current: SessionInfo, *, password: str, code: str
) -> float | bool:
    """The password, or a current authenticator code when one is given (TOTP accounts).

    ``True`` if right, ``False`` if wrong or missing, or the seconds to wait (throttled).
    """
    if code:
        outcome = await accounts.totp.verify(current.user_id, code, ip=request.remote)
        if outcome.ok:
            return True
        return outcome.wait if outcome.wait > 0 else False
    if password:
        return await password_again(accounts, request, current, password)
    return False
