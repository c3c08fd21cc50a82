"""Key-exchange groups X25519, P-256, P-384 only (R-TLS-05, Mozilla modern/intermediate).

Python 3.11's ``ssl`` can set only one group (``set_ecdh_curve``), and has
no ``set_groups`` (checked on 3.11-3.13). OpenSSL's own configuration can:
``Groups = X25519:P-256:P-384`` in the ``system_default`` section, read once
when the process first initialises OpenSSL, so it must be in
``OPENSSL_CONF`` before the process starts. :func:`reexec_with_groups`
therefore writes that file into the data directory and re-executes the same
command once with ``OPENSSL_CONF`` pointing at it; ``homeport relay`` calls
it first thing. An operator who sets ``OPENSSL_CONF`` themselves keeps it
(and a warning says the groups are then theirs to restrict).

Why it matters: without it OpenSSL also offers X448 and P-521, which scanners
flag against the Mozilla profiles; nothing weaker is at stake, but the relay
should serve exactly the configuration it documents.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

__all__ = ["GROUPS", "OPENSSL_CONFIG_NAME", "openssl_config_text", "reexec_with_groups"]

log = logging.getLogger(__name__)

GROUPS = "X25519:P-256:P-384"
OPENSSL_CONFIG_NAME = "openssl-relay.cnf"


def openssl_config_text() -> str:
    # SECLEVEL 2 (Debian's default) stays: no keys under 112-bit security.
    return (
        "# Written by homeport relay (homeport.tls.openssl_groups); rewritten at each start.\n"
        "openssl_conf = homeport_init\n\n"
        "[homeport_init]\nssl_conf = homeport_ssl\n\n"
        "[homeport_ssl]\nsystem_default = homeport_tls\n\n"
        f"[homeport_tls]\nGroups = {GROUPS}\nCipherString = DEFAULT:@SECLEVEL=2\n"
    )


def reexec_with_groups(data_dir: Path) -> None:
    """Re-execute this process under our OpenSSL config, unless already under one.

    Returns (without re-executing) when ``OPENSSL_CONF`` is already ours, or
    set by the operator. Otherwise never returns.
    """
    path = (data_dir / "tls" / OPENSSL_CONFIG_NAME).resolve()
    current = os.environ.get("OPENSSL_CONF")
    if current == str(path):
        return
    if current:
        log.warning(
            "tls.openssl_conf_from_operator",
            extra={"openssl_conf": current, "detail": f"restrict Groups to {GROUPS} there"},
        )
        return
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.parent.mkdir(exist_ok=True, mode=0o700)
    text = openssl_config_text()
    if not path.exists() or path.read_text() != text:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(path)
    env = dict(os.environ, OPENSSL_CONF=str(path))
    argv = [sys.executable, "-c", "import sys; from homeport.cli import main; sys.exit(main())"]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [*argv, *sys.argv[1:]], env)  # noqa: S606 - same program, fixed argv
