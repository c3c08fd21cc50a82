"""A real SMTP server on loopback (aiosmtpd) that keeps what it receives, for mail tests.

``SmtpSink`` runs aiosmtpd's ``Controller`` (its own thread and event loop)
on 127.0.0.1, on a port the kernel picks (``port``, once entered). Optional
STARTTLS with a certificate from the development CA, and optional AUTH with
one login. ``wait_for`` polls from
the test's event loop until a mail to an address arrives.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import re
import ssl
import threading
from collections.abc import Awaitable
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from homeport.tls.devca import ensure_dev_ca


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage

    @property
    def text(self) -> str:
        body = self.message.get_body(preferencelist=("plain",))
        assert body is not None
        return str(body.get_content()).replace("\r\n", "\n")

    def code(self) -> str:
        found = re.search(r"^\s+(\d{6})\s*$", self.text, re.MULTILINE)
        assert found is not None, self.text
        return found.group(1)

    def link(self, path: str) -> str:
        found = re.search(r"https://\S+" + re.escape(path) + r"\?t=[\w-]+", self.text)
        assert found is not None, self.text
        return found.group(0)


class _Controller(Controller):
    """aiosmtpd's threaded controller on a port the kernel picks, which it then reports."""

    def _create_server(self) -> Awaitable[asyncio.AbstractServer]:
        creating = super()._create_server()

        async def create() -> asyncio.AbstractServer:
            server = await creating
            self.port = server.sockets[0].getsockname()[1]
            return server

        return create()


@dataclass
class _Handler:
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        with self.lock:
            self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), message))
        return "250 OK"


class SmtpSink:
    def __init__(
        self,
        *,
        tls_dir: Path | None = None,
        login: tuple[str, str] | None = None,
    ) -> None:
        self.port = 0  # the kernel picks; known once started (see _Controller)
        self.handler = _Handler()
        kwargs: dict[str, Any] = {}
        self.ca_path: Path | None = None
        if tls_dir is not None:
            ca = ensure_dev_ca(tls_dir)
            cert, key = ca.issue_server_certificate(["localhost"], tls_dir / "smtp")
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(cert, key)
            kwargs.update(tls_context=context, require_starttls=True)
            self.ca_path = tls_dir / "tls" / "dev-ca.pem"
        if login is not None:

            def check(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
                ok = (
                    isinstance(data, LoginPassword)
                    and (
                        data.login.decode(),
                        data.password.decode(),
                    )
                    == login
                )
                return AuthResult(success=ok, handled=False)

            kwargs.update(authenticator=check, auth_required=True)
        self.controller = _Controller(
            self.handler,
            hostname="127.0.0.1",
            port=0,
            server_hostname="localhost",
            **kwargs,
        )

    def __enter__(self) -> SmtpSink:
        self.controller.start()
        self.port = self.controller.port
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()

    @property
    def received(self) -> list[Received]:
        with self.handler.lock:
            return list(self.handler.received)

    def to(self, address: str) -> list[Received]:
        return [r for r in self.received if address in r.rcpt_tos]

    async def wait_for(self, address: str, count: int = 1, timeout: float = 30) -> Received:
        """The ``count``-th mail to ``address`` (waits for it)."""
        async with asyncio.timeout(timeout):
            while len(self.to(address)) < count:
                await asyncio.sleep(0.05)
        return self.to(address)[count - 1]
