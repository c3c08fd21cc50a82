"""CAA records that let only this relay's ACME account issue for its names (R-ACME-05).

RFC 8659 CAA with the RFC 8657 ``accounturi`` and ``validationmethods``
parameters: a CA that honours them (Let's Encrypt does) refuses to issue for
our names to anyone but our ACME account, and only by the methods the relay
uses, so a stolen DNS key or a hijacked port 80 elsewhere cannot mint a
certificate through another account. The relay logs the records once it
knows its account URL (``acme.caa_records``); publishing them is a DNS step
(``docs/operations.md``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["caa_records"]

_SAFE = re.compile(r"[\x21-\x7e]+")  # RFC 8659 §4.2: printable, no spaces in values


def _value(issuer: str, account_url: str, methods: Sequence[str]) -> str:
    for part in (issuer, account_url, *methods):
        if not _SAFE.fullmatch(part) or any(c in part for c in ';"'):
            raise ValueError(f"not usable in a CAA value: {part!r}")
    return f"{issuer}; accounturi={account_url}; validationmethods={','.join(methods)}"


def caa_records(
    account_host: str,
    tenant_domain: str,
    account_url: str,
    *,
    issuer: str = "letsencrypt.org",
    account_methods: Sequence[str] = ("http-01", "tls-alpn-01"),
    iodef: str | None = None,
) -> list[str]:
    """Zone-file lines for the account host and the tenant domain.

    The tenant domain allows only the wildcard (``issuewild``) by DNS-01 and
    forbids every non-wildcard certificate (``issue ";"``): no tenant host
    ever has a certificate of its own.
    """
    host, tenant = account_host.rstrip(".") + ".", tenant_domain.rstrip(".") + "."
    lines = [
        f'{host} IN CAA 0 issue "{_value(issuer, account_url, account_methods)}"',
        f'{host} IN CAA 0 issuewild ";"',
        f'{tenant} IN CAA 0 issue ";"',
        f'{tenant} IN CAA 0 issuewild "{_value(issuer, account_url, ["dns-01"])}"',
    ]
    if iodef is not None:
        if not iodef.startswith(("mailto:", "https://")) or '"' in iodef:
            raise ValueError("iodef must be a mailto: or https:// URL")
        lines += [f'{name} IN CAA 0 iodef "{iodef}"' for name in (host, tenant)]
    return lines
