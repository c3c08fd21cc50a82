"""The certificate bot: certificates from an ACME CA (Let's Encrypt) by HTTP-01.

First increment of issue 4 (R-ACME-01/02/03/06/07): one certificate for the
relay's account host, obtained with the ``acme`` library.

* Account key: ECDSA P-256 (ES256), generated here, file mode 0600; the
  account URL is kept beside it so later runs reuse the account.
* Certificate key: ECDSA P-256, generated here, mode 0600, never sent
  anywhere (only a CSR leaves).
* HTTP-01: key authorizations live in a :class:`Http01Responder` only while
  their challenge is being validated; the relay's port-80 listener asks it
  with :meth:`Http01Responder.get` and answers 404 for anything else.
* ``cert.pem`` = leaf + intermediates (never a self-signed root), written
  atomically after ``key.pem``.
* Retries: the ``acme`` library retries a ``badNonce`` once; every step here
  is retried again (bounded) on ``badNonce``, on ``rateLimited`` after the
  server's ``Retry-After`` (capped), and a failed validation restarts the
  order with exponential back-off (bounded) - never a tight loop.

The ``acme`` library is blocking (``requests``); :meth:`AcmeBot.obtain_async`
runs it in a worker thread so the relay's event loop keeps serving, including
the challenge responses.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import re
import secrets
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar, cast

import requests
from acme import challenges, client, crypto_util, errors, messages
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from josepy.jwa import ES256
from josepy.jwk import JWK, JWKEC

from homeport.keys import write_secret_file

log = logging.getLogger(__name__)

__all__ = [
    "ALERT_BELOW",
    "AcmeBot",
    "AcmeBotError",
    "ChallengeResponder",
    "ChallengeSolver",
    "Http01Responder",
    "Issued",
    "RenewalDecision",
    "RetryPolicy",
    "is_acme_token",
    "renewal_decision",
]

T = TypeVar("T")

ACCOUNT_FILE = "account.json"
CERT_FILE = "cert.pem"
KEY_FILE = "key.pem"
#: R-ACME-03: alert when a certificate in use has less than this left.
ALERT_BELOW = dt.timedelta(days=14)
#: Errors after which a whole new order is worth a (backed-off) try.
_ORDER_RETRY_CODES = frozenset({"badNonce", "serverInternal", "orderNotReady"})
#: RFC 8555 §8.3: tokens are base64url; anything else is never ours.
_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,256}")


def is_acme_token(token: str) -> bool:
    """Whether ``token`` has the shape of an ACME token (anything else is never ours)."""
    return _TOKEN.fullmatch(token) is not None


class AcmeBotError(Exception):
    """Issuance failed after every bounded retry."""


# ---------------------------------------------------------------- responder


class ChallengeResponder(Protocol):
    """What the port-80 listener consults: key authorization for ``token`` or None."""

    async def lookup(self, token: str) -> str | None: ...


class ChallengeSolver(Protocol):
    """One way of proving control of a name (HTTP-01, TLS-ALPN-01, DNS-01).

    The bot calls :meth:`prepare` for every pending authorization of an order,
    then :meth:`wait_ready` once (DNS-01 waits for its records to show), then
    answers the challenges, and always :meth:`cleanup` afterwards, so nothing
    that proves control outlives the validation (R-ACME-07). Called from the
    bot's worker thread.
    """

    #: the ACME challenge type answered, e.g. ``"http-01"``
    challenge_type: str

    def prepare(
        self, name: str, challenge: challenges.KeyAuthorizationChallenge, account_key: JWK
    ) -> None: ...

    def wait_ready(self) -> None: ...

    def cleanup(self) -> None: ...


class Http01Responder:
    """HTTP-01 key authorizations, present only while their challenge is validated.

    Thread-safe: the bot (in a worker thread) adds and removes tokens while
    the event loop answers requests.
    """

    challenge_type = "http-01"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tokens: dict[str, str] = {}
        self._prepared: list[str] = []

    def prepare(
        self, name: str, challenge: challenges.KeyAuthorizationChallenge, account_key: JWK
    ) -> None:
        token = challenge.encode("token")
        self.add(token, challenge.key_authorization(account_key))
        self._prepared.append(token)

    def wait_ready(self) -> None:
        """Nothing to wait for: the listener answers from memory."""

    def cleanup(self) -> None:
        while self._prepared:
            self.remove(self._prepared.pop())

    def get(self, token: str) -> str | None:
        if not _TOKEN.fullmatch(token):
            return None
        with self._lock:
            return self._tokens.get(token)

    async def lookup(self, token: str) -> str | None:
        """:meth:`get`, for the port-80 listener (a shared responder may ask the database)."""
        return self.get(token)

    def add(self, token: str, key_authorization: str) -> None:
        if not _TOKEN.fullmatch(token):
            raise ValueError("not an ACME token")
        with self._lock:
            self._tokens[token] = key_authorization

    def remove(self, token: str) -> None:
        with self._lock:
            self._tokens.pop(token, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._tokens)


# ------------------------------------------------------------------ renewal


@dataclass(frozen=True)
class RenewalDecision:
    renew: bool
    #: when a third of the lifetime is left
    renew_at: dt.datetime
    remaining: dt.timedelta
    #: less than :data:`ALERT_BELOW` left (a warning is logged)
    alert: bool


def renewal_decision(
    cert: x509.Certificate | None,
    now: dt.datetime,
    *,
    alert_below: dt.timedelta = ALERT_BELOW,
) -> RenewalDecision:
    """Renew once a third of the certificate's lifetime is left (R-ACME-03).

    Works for any lifetime (90-, 64-, 45-day, 7-hour): the threshold scales
    with it. ``now`` is injected (timezone-aware). No certificate means renew
    now. Under ``alert_below`` left, a warning is logged.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if cert is None:
        return RenewalDecision(True, now, dt.timedelta(0), True)
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    renew_at = end - (end - start) / 3
    remaining = end - now
    alert = remaining < alert_below
    if alert:
        log.warning(
            "acme.certificate_expiring",
            extra={"not_after": end.isoformat(), "days_left": remaining.total_seconds() / 86400},
        )
    return RenewalDecision(now >= renew_at, renew_at, remaining, alert)


# -------------------------------------------------------------------- retry


@dataclass(frozen=True)
class RetryPolicy:
    """Bounds on every retry the bot makes (R-ACME-06)."""

    #: attempts per protocol step on ``badNonce`` / ``rateLimited`` / network errors
    step_attempts: int = 6
    #: whole-order attempts after a failed validation
    order_attempts: int = 3
    base_delay: float = 0.5
    max_delay: float = 30.0
    #: the longest ``Retry-After`` honoured inside one run; longer means give up
    max_retry_after: float = 300.0
    #: poll deadline for validation + finalization of one order
    order_timeout: float = 90.0

    def backoff(self, attempt: int) -> float:
        """Exponential back-off with jitter for retry number ``attempt`` (1-based)."""
        delay: float = min(self.max_delay, self.base_delay * 2.0 ** (attempt - 1))
        return delay * (0.5 + secrets.randbelow(1000) / 2000)


class _Network(client.ClientNetwork):
    """Remembers the last response, for ``Retry-After`` on ``rateLimited``."""

    last_response: requests.Response | None = None

    def _send_request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:
        response = super()._send_request(method, url, *args, **kwargs)
        self.last_response = response
        return response


def _retry_after_seconds(response: requests.Response | None) -> float | None:
    if response is None:
        return None
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    when = client.ClientV2.retry_after(response, 0)
    return max(0.0, float((when - dt.datetime.now()).total_seconds()))


# ---------------------------------------------------------------------- bot


@dataclass(frozen=True)
class Issued:
    cert_path: Path
    key_path: Path
    certificate: x509.Certificate
    #: certificates written after the leaf (intermediates only)
    chain: tuple[x509.Certificate, ...]
    account_url: str
    order_attempts: int


def _new_p256() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _load_p256(path: Path) -> ec.EllipticCurvePrivateKey:
    st = path.stat()
    if st.st_mode & 0o077:
        raise AcmeBotError(f"{path} is readable by other users (mode {st.st_mode & 0o777:o})")
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise AcmeBotError(f"{path} is not an ECDSA P-256 key")
    return key


class AcmeBot:
    """Obtains the certificate for ``names`` from the ACME CA at ``directory_url``.

    ``ca_bundle_for_directory``: a CA file trusted for the directory's HTTPS
    (pebble's test CA), or None for the system store.
    """

    def __init__(
        self,
        directory_url: str,
        account_key_path: Path,
        cert_dir: Path,
        names: Sequence[str],
        challenge_responder: ChallengeSolver,
        ca_bundle_for_directory: Path | None = None,
        *,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] | None = None,
        user_agent: str = "homeport-acme-bot",
        email: str | None = None,
    ) -> None:
        if not names:
            raise ValueError("at least one name")
        self.directory_url = directory_url
        self.account_key_path = account_key_path
        self.cert_dir = cert_dir
        self.names = [n.lower().rstrip(".") for n in names]
        self.responder = challenge_responder
        self.ca_bundle = ca_bundle_for_directory
        self.retry = retry or RetryPolicy()
        #: set by :meth:`cancel`: the worker thread stops at its next step or sleep
        self._stopping = threading.Event()
        self._sleep = sleep or self._interruptible_sleep
        self._user_agent = user_agent
        self.email = email
        #: number of step retries taken (badNonce etc.), for tests and metrics
        self.step_retries = 0

    @property
    def cert_path(self) -> Path:
        return self.cert_dir / CERT_FILE

    @property
    def key_path(self) -> Path:
        return self.cert_dir / KEY_FILE

    @property
    def account_file(self) -> Path:
        return self.account_key_path.with_name(ACCOUNT_FILE)

    # ------------------------------------------------------------ public

    def current_certificate(self) -> x509.Certificate | None:
        try:
            return x509.load_pem_x509_certificate(self.cert_path.read_bytes())
        except (FileNotFoundError, ValueError):
            return None

    def needs_renewal(self, now: dt.datetime) -> RenewalDecision:
        return renewal_decision(self.current_certificate(), now)

    async def obtain_async(self) -> Issued:
        return await asyncio.to_thread(self.obtain)

    def obtain(self) -> Issued:
        """Run one full issuance: account, order, HTTP-01, finalize, write files.

        Raises :class:`AcmeBotError` once the bounded retries are spent or the
        CA refuses for good (the error it sent is the ``__cause__``).
        """
        try:
            return self._obtain()
        except (messages.Error, errors.Error) as exc:
            raise AcmeBotError(f"ACME: {exc}") from exc

    def _obtain(self) -> Issued:
        account_key = self._account_key()
        net = _Network(
            JWKEC(key=account_key),
            alg=ES256,
            # requests takes a CA file path where the library's hint says bool
            verify_ssl=cast(bool, str(self.ca_bundle) if self.ca_bundle else True),
            user_agent=self._user_agent,
        )
        directory = self._step(
            "directory", net, lambda: client.ClientV2.get_directory(self.directory_url, net)
        )
        acme = client.ClientV2(directory, net)
        account_url = self._account(acme, net)

        cert_key = _new_p256()
        csr_pem = crypto_util.make_csr(_pem(cert_key), self.names)
        last_error: Exception | None = None
        for attempt in range(1, self.retry.order_attempts + 1):
            try:
                fullchain = self._one_order(acme, net, csr_pem)
            except (errors.ValidationError, errors.TimeoutError, messages.Error) as exc:
                if isinstance(exc, messages.Error) and exc.code not in _ORDER_RETRY_CODES:
                    raise
                last_error = exc
                log.warning("acme.order_failed", extra={"attempt": attempt, "error": str(exc)})
                if attempt < self.retry.order_attempts:
                    self._sleep(self.retry.backoff(attempt))
                continue
            leaf, chain = self._write(cert_key, fullchain)
            log.info(
                "acme.issued",
                extra={"names": self.names, "not_after": leaf.not_valid_after_utc.isoformat()},
            )
            return Issued(self.cert_path, self.key_path, leaf, chain, account_url, attempt)
        raise AcmeBotError(f"no certificate after {self.retry.order_attempts} orders") from (
            last_error
        )

    def cancel(self) -> None:
        """Make a run in progress (in its worker thread) stop soon, for relay shutdown.

        It stops before its next protocol step or at once if sleeping (a poll
        inside the ``acme`` library finishes first); the challenge proofs are
        still removed. Later runs fail at once.
        """
        self._stopping.set()

    # ---------------------------------------------------------- internals

    def _interruptible_sleep(self, seconds: float) -> None:
        self._stopping.wait(seconds)

    def _step(self, what: str, net: _Network, call: Callable[[], T]) -> T:
        """``call()`` with bounded retries on badNonce, rateLimited and network errors."""
        for attempt in range(1, self.retry.step_attempts + 1):
            if self._stopping.is_set():
                raise AcmeBotError(f"{what}: cancelled (relay stopping)")
            last = attempt == self.retry.step_attempts
            try:
                return call()
            except messages.Error as exc:
                if exc.code == "badNonce" and not last:
                    delay = self.retry.backoff(attempt) / 4
                elif exc.code == "rateLimited" and not last:
                    after = _retry_after_seconds(net.last_response)
                    delay = after if after is not None else self.retry.backoff(attempt)
                    if delay > self.retry.max_retry_after:
                        raise AcmeBotError(f"{what}: rate limited for {delay:.0f} s") from exc
                else:
                    raise
                log.info("acme.retry", extra={"step": what, "error": exc.code, "delay": delay})
            except requests.RequestException as exc:
                if last:
                    raise AcmeBotError(f"{what}: {exc}") from exc
                delay = self.retry.backoff(attempt)
                log.info("acme.retry", extra={"step": what, "error": type(exc).__name__})
            self.step_retries += 1
            self._sleep(delay)
        raise AssertionError("unreachable")

    def _account_key(self) -> ec.EllipticCurvePrivateKey:
        if self.account_key_path.exists():
            return _load_p256(self.account_key_path)
        key = _new_p256()
        write_secret_file(self.account_key_path, _pem(key))
        return key

    def _account(self, acme: client.ClientV2, net: _Network) -> str:
        """Register, or find the existing account for this key (RFC 8555 §7.3.1)."""
        new = messages.NewRegistration.from_data(email=self.email, terms_of_service_agreed=True)
        try:
            regr = self._step("new-account", net, lambda: acme.new_account(new))
            url = regr.uri
        except errors.ConflictError as exc:  # 200: this key already has an account
            url = exc.location
            net.account = messages.RegistrationResource(uri=url, body=messages.Registration())
        assert url is not None
        self._save_account_url(url)
        return url

    def _save_account_url(self, url: str) -> None:
        data = json.dumps({"directory": self.directory_url, "account_url": url}).encode()
        try:
            if self.account_file.read_bytes() == data:
                return
        except FileNotFoundError:
            pass
        write_secret_file(self.account_file, data, replace=True)

    def saved_account_url(self) -> str | None:
        try:
            return str(json.loads(self.account_file.read_text())["account_url"])
        except (FileNotFoundError, ValueError, KeyError):
            return None

    def _one_order(self, acme: client.ClientV2, net: _Network, csr_pem: bytes) -> str:
        order = self._step("new-order", net, lambda: acme.new_order(csr_pem))
        solver = self.responder
        account_key = net.key
        assert account_key is not None
        try:
            answers: list[tuple[messages.ChallengeBody, challenges.ChallengeResponse]] = []
            for authz in order.authorizations:
                if authz.body.status == messages.STATUS_VALID:
                    continue  # authorization reuse
                challb = next(
                    (c for c in authz.body.challenges if c.chall.typ == solver.challenge_type),
                    None,
                )
                name = authz.body.identifier.value
                if challb is None or not isinstance(
                    challb.chall, challenges.KeyAuthorizationChallenge
                ):
                    raise AcmeBotError(f"no {solver.challenge_type} challenge for {name}")
                solver.prepare(name, challb.chall, account_key)
                answers.append((challb, challb.chall.response(account_key)))
            solver.wait_ready()
            for challb, response in answers:
                self._answer(acme, net, challb, response)
            deadline = dt.datetime.now() + dt.timedelta(seconds=self.retry.order_timeout)
            order = self._step(
                "authorizations", net, lambda: acme.poll_authorizations(order, deadline)
            )
        finally:
            solver.cleanup()  # R-ACME-07: proofs exist only during validation
        deadline = dt.datetime.now() + dt.timedelta(seconds=self.retry.order_timeout)
        # Two steps: a badNonce while polling must not re-send the finalization.
        ready = order
        begun = self._step("finalize", net, lambda: acme.begin_finalization(ready))
        done = self._step("certificate", net, lambda: acme.poll_finalization(begun, deadline))
        if done.fullchain_pem is None:
            raise AcmeBotError("finalized order has no certificate")
        return str(done.fullchain_pem)

    def _answer(
        self,
        acme: client.ClientV2,
        net: _Network,
        challb: messages.ChallengeBody,
        response: challenges.ChallengeResponse,
    ) -> None:
        self._step("challenge", net, lambda: acme.answer_challenge(challb, response))

    def _write(
        self, key: ec.EllipticCurvePrivateKey, fullchain_pem: str
    ) -> tuple[x509.Certificate, tuple[x509.Certificate, ...]]:
        certs = x509.load_pem_x509_certificates(fullchain_pem.encode())
        leaf, rest = certs[0], certs[1:]
        if leaf.public_key() != key.public_key():
            raise AcmeBotError("issued certificate does not match our key")
        # R-TLS-07: never serve the root; drop any self-signed certificate.
        chain = tuple(c for c in rest if c.subject != c.issuer)
        body = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (leaf, *chain))
        # Key first: a crash in between leaves a mismatched pair, which is
        # detected (and reissued) rather than served.
        write_secret_file(self.key_path, _pem(key), replace=True)
        write_secret_file(self.cert_path, body, replace=True)
        return leaf, chain
