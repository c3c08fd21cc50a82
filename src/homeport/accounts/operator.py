"""What a relay's operator does to an account from the command line (``homeport admin``).

Kept apart from :mod:`homeport.accounts.service`: each action is one small
method over the same database, recorded in the audit log like the account
site's own actions, so the owner sees on their *Security* page what the
operator did.

Threats these handle:

* A lost second factor: ``reset_second_factor`` removes the authenticator
  app, the recovery codes and every passkey, and ends every session, so a
  thief holding a session does not keep it through the reset.  It is
  audited (``factor.reset_by_operator``) and, with mail configured, the
  owner is told by mail, so a reset obtained by deceiving the operator does
  not go unnoticed.
* A compromised or abusive account: ``set_user_disabled`` (in the service)
  ends its sessions at once; ``delete_user`` unlinks its homes (retiring
  their names, R-MT-13) and deletes everything stored about it except the
  audit events, which outlive it until the 180-day purge.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import delete, func, select

from homeport.accounts.audit import register_event_type
from homeport.accounts.errors import UnknownUser
from homeport.accounts.models import (
    Instance,
    PasskeyCredential,
    RecoveryCode,
    TotpCredential,
    User,
    WebSession,
)
from homeport.accounts.service import Accounts
from homeport.accounts.sessions import revoke_stmt
from homeport.accounts.single_use import rowcount

__all__ = ["ACCOUNT_DELETED", "FACTOR_RESET", "Operator", "ResetResult"]

_log = logging.getLogger(__name__)

FACTOR_RESET = "factor.reset_by_operator"
ACCOUNT_DELETED = "account.deleted_by_operator"
register_event_type(FACTOR_RESET, "Second factor reset by the relay's operator")
register_event_type(ACCOUNT_DELETED, "Account deleted by the relay's operator")
#: The ``device`` column of the operator's audit events.
DEVICE = "Relay operator (command line)"


@dataclass(frozen=True)
class ResetResult:
    user: User
    totp: bool
    recovery_codes: int
    passkeys: int
    sessions: int


class Operator:
    def __init__(self, accounts: Accounts) -> None:
        self.accounts = accounts
        self._db = accounts._db

    async def user(self, email: str) -> User:
        user = await self.accounts.get_user_by_email(email)
        if user is None:
            raise UnknownUser(f"No account {email}.")
        return user

    async def reset_second_factor(self, email: str) -> ResetResult:
        """Remove TOTP, recovery codes and passkeys; end every session; audit."""
        user = await self.user(email)
        now = self.accounts._now()
        async with self._db.session(write=True) as s, s.begin():
            totp = await s.scalar(select(func.count()).where(TotpCredential.user_id == user.id))
            codes = await s.scalar(select(func.count()).where(RecoveryCode.user_id == user.id))
            passkeys = await s.scalar(
                select(func.count()).where(PasskeyCredential.user_id == user.id)
            )
            await s.execute(delete(TotpCredential).where(TotpCredential.user_id == user.id))
            await s.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user.id))
            await s.execute(delete(PasskeyCredential).where(PasskeyCredential.user_id == user.id))
            ended = await s.execute(revoke_stmt(now, WebSession.user_id == user.id))
        sessions = rowcount(ended)
        _log.info("second factor reset by the operator: user %d", user.id)
        await self.accounts.audit.record(
            FACTOR_RESET,
            user_id=user.id,
            device=DEVICE,
            detail=f"authenticator app {'removed' if totp else 'none'}, "
            f"{passkeys or 0} passkey(s) removed, {sessions} session(s) ended",
        )
        return ResetResult(user, bool(totp), int(codes or 0), int(passkeys or 0), sessions)

    async def owned_homes(self, user: User) -> list[str]:
        async with self._db.session() as s:
            return list(await s.scalars(select(Instance.id).where(Instance.owner_id == user.id)))

    async def delete_user(self, email: str) -> tuple[User, list[str]]:
        """Unlink the account's homes, then delete it with everything that hangs off it."""
        user = await self.user(email)
        homes = await self.owned_homes(user)
        for instance_id in homes:
            await self.accounts.unlink_instance(instance_id)
        async with self._db.session(write=True) as s, s.begin():
            # Sessions first and explicitly: correct even without ON DELETE CASCADE.
            await s.execute(delete(WebSession).where(WebSession.user_id == user.id))
            await s.execute(delete(User).where(User.id == user.id))
        _log.info("account deleted by the operator: user %d", user.id)
        await self.accounts.audit.record(
            ACCOUNT_DELETED, user_id=user.id, device=DEVICE, detail=f"{len(homes)} home(s)"
        )
        return user, homes
