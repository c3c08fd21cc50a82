"""The pairing string: a relay's tunnel address and its pinned key(s), in one line.

The relay's "Add a home" page shows it (as text, QR code and a copy button);
the add-on takes it as its ``pairing`` option or ``homeport addon --pairing``,
in place of the two separate settings (``relay_url`` and ``relay_keys``, which
stay for automation)::

    homeport+wss://homeport.example/v1/tunnel#ed25519:<43 characters>[,ed25519:...]

It is a URI so that it reads as what it is: the ``homeport+wss`` scheme marks it
as a pairing string (a plain ``wss://`` URL is not one), the address is the
tunnel's, and the fragment holds the relay's public signing key(s), several
during a key rotation.  Nothing in it is secret: the keys are public, and an
add-on still proves its own key and is linked to an account by a one-time code.

Threat this stops: a relay key typed by hand (or half-pasted) and then pinned
wrongly.  The string is parsed strictly and every flaw is refused with one
line that says what is wrong, never a partial pairing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlencode

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from yarl import URL

from homeport.keys import parse_pinned_keys, public_key_text

__all__ = ["PREFIX", "Pairing", "PairingError", "make_pairing", "parse_pairing"]

SCHEME: Final = "homeport+wss"
PREFIX: Final = SCHEME + "://"
#: Far more than any real one (an address and a few keys); refuses pasted junk early.
MAX_LENGTH: Final = 1024


class PairingError(ValueError):
    """A pairing string that cannot be used; the message is one line saying why."""


@dataclass(frozen=True, slots=True)
class Pairing:
    relay_url: str
    pinned_keys: tuple[Ed25519PublicKey, ...]


def make_pairing(relay_url: str, keys: Sequence[Ed25519PublicKey]) -> str:
    """The pairing string for a relay's tunnel URL (``wss://…``) and its key(s)."""
    if not relay_url.startswith("wss://") or not keys:
        raise ValueError("a pairing needs a wss:// tunnel URL and at least one key")
    return PREFIX + relay_url.removeprefix("wss://") + "#" + ",".join(map(public_key_text, keys))


def parse_pairing(text: str) -> Pairing:
    """Read a pairing string; :class:`PairingError` names the flaw in one line."""
    text = text.strip()
    if not text:
        raise PairingError("the pairing string is empty; copy it from the relay's Add a home page")
    if len(text) > MAX_LENGTH:
        raise PairingError("the pairing string is too long; copy it again from the relay")
    if any(ch.isspace() for ch in text):
        raise PairingError("the pairing string has spaces or line breaks in it; copy it again")
    if not text.startswith(PREFIX):
        raise PairingError(
            f"a pairing string starts with {PREFIX}; copy it from the relay's Add a home page"
        )
    address, hash_mark, keys = text[len(PREFIX) :].partition("#")
    if not hash_mark or not keys:
        raise PairingError(
            "the pairing string ends before the relay's key (after '#'); copy all of it"
        )
    try:
        url = URL("wss://" + address)
        url.port  # noqa: B018 - some yarl versions check the port only here
    except ValueError as exc:
        flaw = "has an invalid port" if "port" in str(exc).lower() else "is not a valid address"
        raise PairingError(f"the pairing string's relay address {flaw}") from None
    if not url.host or url.user or url.password or url.query_string:
        raise PairingError("the pairing string's relay address is not a valid address")
    try:
        pinned = tuple(parse_pinned_keys(keys.replace(",", " ")))
    except ValueError as exc:
        raise PairingError(f"the pairing string's relay key is not valid ({exc})") from None
    return Pairing(relay_url=str(url), pinned_keys=pinned)


#: The add-on repository the "Add a home" page sends people to (``repository.yaml``'s
#: ``url``; a test keeps the two equal).
ADDON_REPOSITORY: Final = "https://github.com/homeport-project/homeport"


def add_repository_link(repository: str = ADDON_REPOSITORY) -> str:
    """A "My Home Assistant" link: opens the person's own Home Assistant on the add-on
    store's "add repository" dialog with ``repository`` filled in."""
    return "https://my.home-assistant.io/redirect/supervisor_add_addon_repository/?" + urlencode(
        {"repository_url": repository}
    )
