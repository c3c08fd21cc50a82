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
  ends its sessions at once; ``delete_user`` is the same deletion an owner
  asks for on the account site (:mod:`homeport.accounts.deletion`): its homes
  unlinked (names retired, R-MT-13), its memberships removed, everything
  stored about it deleted except the audit events, which outlive it until the
  180-day purge. A relay running beside the command cuts the deleted
  account's live traffic and its homes' tunnels within its 5 s sweep; relay
  nodes of a cluster do it at once when the command is given the cluster's
  settings (``homeport.relay.cluster.announce``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import delete, func, select

from homeport.accounts.audit import register_event_type
from homeport.accounts.deletion import ACCOUNT_DELETED_BY_OPERATOR, OPERATOR_DEVICE, Deleted
from homeport.accounts.errors import UnknownUser
from homeport.accounts.models import (
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
ACCOUNT_DELETED = ACCOUNT_DELETED_BY_OPERATOR
register_event_type(FACTOR_RESET, "Second factor reset by the relay's operator")
#: The ``device`` column of the operator's audit events.
DEVICE = OPERATOR_DEVICE


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
        return await self.accounts.deletion.owned_homes(user.id)

    async def delete_user(self, email: str) -> tuple[User, Deleted]:
        """The account deletion of :mod:`homeport.accounts.deletion`, audited as the operator's."""
        user = await self.user(email)
        deleted = await self.accounts.deletion.delete(user.id, by_operator=True)
        return user, deleted
