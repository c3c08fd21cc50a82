"""Breached passwords: the k-anonymity range check (R-PWD-03, NIST SP 800-63B-4 §3.1.1.2).

Threat this stops: a new password that attackers already have because it
leaked from another service. Such passwords are tried first in credential
stuffing and dictionary attacks, whatever their length; NIST requires new
passwords to be compared against a list of breached ones.

How (Have I Been Pwned's range API, or any service of its shape): the SHA-1
of the password (its NFKC form, as it is hashed here) is computed locally
and only its first five hex characters are sent, ``GET {base}/range/{prefix}``.
The service answers every suffix it knows under that prefix with a count,
one ``SUFFIX:COUNT`` line each, and the comparison is made here: the service
never learns the password or its full hash (about 800 hashes share each
prefix). ``Add-Padding: true`` asks for fake lines of count 0, so the size of
the answer says nothing about the prefix either; a line of count 0 is never
a match.

Rules:

* **Optional and off by default**: a relay may have no outbound network. The
  operator turns it on with the service's base URL (``--breached-passwords-url``,
  ``https://api.pwnedpasswords.com`` for the public service, or a local mirror).
  Only ``https://``, or ``http://`` to a loopback host (a mirror on the same
  machine, a test stand-in): an attacker on the path could otherwise answer
  "never breached".
* **Fail open**: no answer within :data:`DEFAULT_TIMEOUT` (the whole exchange,
  not each read), a connection error, a status other than 200 or an answer
  that is not the range format lets the password through, so sign-up and
  password changes keep working when the service is down. Each such case is
  logged as ``accounts.breach_check_unavailable`` with the reason (metadata
  only: never the password, its hash or the prefix).
* **Bounded**: at most :data:`MAX_RESPONSE` bytes are read; redirects are not
  followed.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import re
from typing import Final
from urllib.parse import urlsplit

import httpx2

from homeport.accounts.passwords import PasswordPolicyError, normalise_password

__all__ = [
    "BREACHED_MESSAGE",
    "DEFAULT_TIMEOUT",
    "BreachedPasswords",
    "check_range_url",
    "range_request",
]

_log = logging.getLogger(__name__)

#: Seconds for the whole exchange with the service (connect, request, answer).
DEFAULT_TIMEOUT: Final = 3.0
#: A padded range answer is about 40 KB; anything far larger is not one.
MAX_RESPONSE: Final = 1024 * 1024
BREACHED_MESSAGE: Final = (
    "This password has appeared in a data breach, so attackers try it first. Choose another one."
)
_LINE: Final = re.compile(r"([0-9A-Fa-f]{35}):(\d{1,12})")
_USER_AGENT: Final = "homeport-relay (breached-password check)"


def check_range_url(url: str) -> str:
    """The service's base URL without a trailing slash; :class:`ValueError` says what is wrong."""
    parts = urlsplit(url.strip())
    host = parts.hostname or ""
    if parts.scheme not in ("https", "http") or not host:
        raise ValueError(
            f"--breached-passwords-url must be an https:// URL, not {url!r} "
            "(e.g. https://api.pwnedpasswords.com)"
        )
    if parts.scheme == "http" and not _is_loopback(host):
        raise ValueError(
            "--breached-passwords-url: plain http:// is only allowed for a loopback host; "
            f"use https:// for {host!r}"
        )
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError("--breached-passwords-url takes no query, fragment or credentials")
    return url.strip().rstrip("/")


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def range_request(password: str) -> tuple[str, str]:
    """``(prefix, suffix)``: the five hex characters sent and the 35 compared locally."""
    # The range API's hash (SHA-1 by its definition); never used to store anything.
    digest = hashlib.sha1(
        normalise_password(password).encode("utf-8", "surrogatepass"), usedforsecurity=False
    ).hexdigest()
    upper = digest.upper()
    return upper[:5], upper[5:]


class BreachedPasswords:
    """Asks a range API whether a password has been breached; see the module docstring."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx2.AsyncBaseTransport | None = None,
    ) -> None:
        if not 0 < timeout <= 60:
            raise ValueError("--breached-passwords-timeout must be seconds between 0 and 60")
        self.base_url = check_range_url(base_url)
        self.timeout = timeout
        self._transport = transport

    async def times_seen(self, password: str) -> int | None:
        """How often the service has seen the password (0: never); ``None``: no answer."""
        prefix, suffix = range_request(password)
        try:
            async with asyncio.timeout(self.timeout):
                body = await self._fetch(prefix)
        except TimeoutError:
            self._unavailable("timeout")
            return None
        except httpx2.HTTPError as exc:
            self._unavailable(type(exc).__name__)
            return None
        except _Unusable as exc:
            self._unavailable(str(exc))
            return None
        seen = 0
        lines = 0
        for line in body.splitlines():
            match = _LINE.fullmatch(line.strip())
            if match is None:
                continue
            lines += 1
            if match.group(1).upper() == suffix:
                seen = int(match.group(2))  # 0 for a padding line: not a match
        if lines == 0 and body.strip():
            self._unavailable("not a range answer")
            return None
        return seen

    async def is_breached(self, password: str) -> bool:
        """Whether the password is known to be breached; ``False`` when the service is silent."""
        return bool(await self.times_seen(password))

    async def check(self, password: str) -> None:
        """Raise :class:`PasswordPolicyError` for a breached password (fail open)."""
        if await self.is_breached(password):
            _log.info("accounts.breached_password_refused")
            raise PasswordPolicyError(BREACHED_MESSAGE)

    async def _fetch(self, prefix: str) -> str:
        async with (
            httpx2.AsyncClient(
                timeout=httpx2.Timeout(self.timeout),
                follow_redirects=False,
                transport=self._transport,
                headers={"User-Agent": _USER_AGENT},
            ) as client,
            client.stream(
                "GET", f"{self.base_url}/range/{prefix}", headers={"Add-Padding": "true"}
            ) as response,
        ):
            if response.status_code != 200:
                raise _Unusable(f"status {response.status_code}")
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > MAX_RESPONSE:
                    raise _Unusable("answer too large")
                chunks.append(chunk)
        return b"".join(chunks).decode("ascii", "replace")

    def _unavailable(self, reason: str) -> None:
        _log.warning(
            "accounts.breach_check_unavailable",
            extra={"reason": reason, "service": urlsplit(self.base_url).hostname},
        )


class _Unusable(Exception):
    """The service answered, but not with a range answer we can use."""
