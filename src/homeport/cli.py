"""``homeport`` command line: relay, addon, admin, keys, dev.

Options come from a flag, else an environment variable ``HOMEPORT_<NAME>``,
else the TOML file given with ``--config`` (section ``[relay]`` / ``[addon]``),
else the built-in default — in that order of precedence.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import re
import socket
import sys
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from homeport import __version__
from homeport.config import (
    ConfigError,
    Options,
    check_environment,
    check_readable_file,
)
from homeport.extras import relay_extra_error
from homeport.logs import setup_logging
from homeport.tls.acme_settings import add_acme_arguments


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "homeport"


def options(args: argparse.Namespace, section: str) -> Options:
    """The option lookup of ``homeport relay`` / ``homeport addon``, TOML keys checked."""
    return Options(args, section, known_options(section))


@functools.cache
def known_options(command: str | None = None) -> frozenset[str]:
    """Option names (argparse ``dest``) of one subcommand, or of all of them (``None``)."""
    names = {"log_level"}
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                if command is None or name == command:
                    names |= _dests(sub)
    if command is not None:
        names -= {"log_level", "config"}
    return frozenset(names)


def _dests(parser: argparse.ArgumentParser) -> set[str]:
    found: set[str] = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found |= _dests(sub)
        elif action.option_strings and action.dest != "help":
            found.add(action.dest)
    return found


def _run(main: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop

        uvloop.run(main)
    except ImportError:  # pragma: no cover - platforms without uvloop
        asyncio.run(main)


async def _until_signalled(stop: Callable[[], Coroutine[Any, Any, None]]) -> None:
    from homeport.signals import until_stop_signal

    await until_stop_signal()
    await stop()


# ----------------------------------------------------------------------- relay


def relay_config(args: argparse.Namespace, *, serving: bool = True) -> Any:
    """The relay's settings; ``serving=False`` for commands that only read them (admin,
    keys), which skip what only matters to a listening relay (``--http-listen`` may be on
    the relay's command line, in its systemd unit, rather than in the shared file)."""
    from homeport.relay.config import SECURITY_CONTACT, SECURITY_POLICY, RelayConfig
    from homeport.tls.acme_settings import acme_settings

    opts = options(args, "relay")
    listen = opts.host_port("listen", "127.0.0.1:8443")
    assert listen is not None
    tls_profile = str(opts.get("tls_profile", "modern")).lower()
    if tls_profile not in ("modern", "intermediate"):
        raise ConfigError(f"--tls-profile must be modern or intermediate: {tls_profile!r}")
    http_listen = opts.host_port("http_listen")
    tls_cert, tls_key = _tls_files(opts)
    from homeport.mail.options import signup_open, smtp_settings
    from homeport.mail.settings import MailSettingsError

    try:
        smtp = smtp_settings(opts)
        signup = signup_open(opts, smtp)
    except MailSettingsError as exc:
        raise ConfigError(str(exc)) from None
    limits = _limit_options(opts)
    acme = acme_settings(opts.get)
    if serving and acme is not None and acme.challenge == "http-01" and http_listen is None:
        raise ConfigError("--acme-challenge http-01 needs --http-listen (port 80)")
    return RelayConfig(
        data_dir=opts.path("data_dir", default_data_dir()) or default_data_dir(),
        account_host=_host_name(opts, "account_host", "homeport.localhost"),
        tenant_domain=_host_name(opts, "tenant_domain", "home.localhost"),
        listen_host=listen[0],
        listen_port=listen[1],
        public_port=opts.integer("public_port", low=1),
        database_url=opts.get("database_url"),
        tls_cert=tls_cert,
        tls_key=tls_key,
        server_key=opts.path("server_key"),
        tls_profile=tls_profile,
        http_listen_host=http_listen[0] if http_listen else "127.0.0.1",
        http_listen_port=http_listen[1] if http_listen else None,
        security_contact=str(opts.get("security_contact", SECURITY_CONTACT)),
        security_policy=str(opts.get("security_policy", SECURITY_POLICY)),
        oidc_providers=_oidc_providers(opts),
        smtp=smtp,
        signup=signup,
        max_body_bytes=limits["max_body_bytes"],
        tenant_max_requests=limits["tenant_max_requests"],
        client_max_requests=limits["client_max_requests"],
        tenant_bandwidth=limits["tenant_bandwidth"],
        tenant_burst=limits["tenant_burst"],
        upload_min_bytes=limits["upload_min_bytes"],
        upload_window=limits["upload_window"],
        account_max_requests=limits["account_max_requests"],
        account_body_seconds=limits["account_body_seconds"],
        integration_rate=limits["integration_rate"],
        integration_burst=limits["integration_burst"],
        integration_max_requests=limits["integration_max_requests"],
        integration_max_body=limits["integration_max_body"],
        acme=acme,
        metrics_listen=_metrics_listen(opts.get("metrics_listen")),
        link_poll_seconds=_link_poll(opts.get("link_poll_seconds", 2.0)),
        **_breached_passwords(opts),
        **_cluster(opts),
        **_proxy_protocol(opts),
    )


def _proxy_protocol(opts: Options) -> dict[str, Any]:
    """``--proxy-protocol-from``: the load balancer's networks (off without it)."""
    from homeport.tls.proxy_listener import parse_networks

    text = opts.get("proxy_protocol_from")
    if not text:
        return {}
    try:
        return {"proxy_protocol_from": parse_networks(str(text))}
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _cluster(opts: Options) -> dict[str, Any]:
    """``--redis-url`` and ``--cluster-key-file``: both or neither (one node of several)."""
    url, key_file = opts.get("redis_url"), opts.path("cluster_key_file")
    if not url:
        if key_file is not None:
            raise ConfigError("--cluster-key-file needs --redis-url")
        return {}
    url = str(url)
    if url.split("://", 1)[0] not in ("redis", "rediss", "unix"):
        # Not echoed: a Redis URL may carry a password.
        raise ConfigError("--redis-url must be a redis://, rediss:// or unix:// URL")
    if key_file is None:
        raise ConfigError(
            "--redis-url needs --cluster-key-file (the same key file on every node; "
            "make one with: openssl rand -base64 48)"
        )
    name = opts.get("node_name")
    if name is not None and not re.fullmatch(r"[A-Za-z0-9_.-]{1,40}", str(name)):
        raise ConfigError("--node-name: 1-40 letters, digits, '.', '_' or '-'")
    return {
        "redis_url": url,
        "cluster_key_file": key_file,
        **({"node_name": str(name)} if name is not None else {}),
    }


def _breached_passwords(opts: Options) -> dict[str, Any]:
    """``--breached-passwords-url`` and its timeout, checked (off without a URL)."""
    from homeport.accounts.breached import DEFAULT_TIMEOUT, check_range_url

    url = opts.get("breached_passwords_url")
    raw_timeout = opts.get("breached_passwords_timeout", DEFAULT_TIMEOUT)
    try:
        timeout = float(raw_timeout)
    except (TypeError, ValueError):
        timeout = 0.0
    if not 0 < timeout <= 60:
        raise ConfigError(
            f"--breached-passwords-timeout must be seconds between 0 and 60, not {raw_timeout!r}"
        )
    if not url:
        return {"breached_passwords_timeout": timeout}
    try:
        checked = check_range_url(str(url))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return {"breached_passwords_url": checked, "breached_passwords_timeout": timeout}


def _host_name(opts: Options, name: str, default: str) -> str:
    """A DNS name as the relay serves it: lower case, no port, no trailing dot."""
    value = str(opts.get(name, default)).strip().lower().rstrip(".")
    labels = value.split(".")
    if not all(re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", label) for label in labels):
        raise ConfigError(f"--{name.replace('_', '-')} must be a DNS name, not {value!r}")
    return value


def _tls_files(opts: Options) -> tuple[Path | None, Path | None]:
    """``--tls-cert`` and ``--tls-key``: both or neither, both readable."""
    cert, key = opts.path("tls_cert"), opts.path("tls_key")
    if (cert is None) != (key is None):
        given, missing = ("--tls-cert", "--tls-key") if key is None else ("--tls-key", "--tls-cert")
        raise ConfigError(f"{given} needs {missing}: give the certificate and its key together")
    return cert, key


def _check_relay_files(config: Any) -> None:
    """Files the relay reads later must be there now (one line, not a traceback at start)."""
    check_readable_file(config.tls_cert, "--tls-cert")
    check_readable_file(config.tls_key, "--tls-key")
    if config.acme is not None:
        check_readable_file(config.acme.ca_file, "--acme-ca-file")
        check_readable_file(config.acme.dns_tsig_key_file, "--dns-tsig-key-file")
    if config.cluster_key_file is not None:
        from homeport.relay.cluster.node import load_cluster_key

        try:
            load_cluster_key(config.cluster_key_file)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None


def _link_poll(value: Any) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = 0.0
    if not 0 < seconds <= 60:
        raise ConfigError(f"--link-poll must be seconds between 0 and 60, not {value!r}")
    return seconds


def _metrics_listen(value: Any) -> tuple[str, int] | None:
    """``--metrics-listen host:port``; None when unset (no metrics listener)."""
    if not value:
        return None
    host, _, port = str(value).rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--metrics-listen must be host:port: {value!r}")
    return host.strip("[]"), int(port)


def _oidc_providers(opts: Options) -> Any:
    from homeport.relay.oidc_settings import OidcSettingsError, providers_from_options

    try:
        return providers_from_options(opts.get, opts.path)
    except OidcSettingsError as exc:
        raise SystemExit(f"error: {exc}") from exc


def _limit_options(opts: Options) -> dict[str, Any]:
    """The edge limits (``homeport.relay.limits``); a malformed value stops the relay."""
    from homeport.relay.config import RelayConfig
    from homeport.relay.limits import parse_seconds, parse_size

    defaults = RelayConfig(data_dir=Path())
    try:
        sizes = {
            name: parse_size(opts.get(name, getattr(defaults, name)), option=f"--{flag}")
            for name, flag in LIMIT_FLAGS.items()
        }
        seconds = {
            name: parse_seconds(opts.get(name, getattr(defaults, name)), option=f"--{flag}")
            for name, flag in SECONDS_FLAGS.items()
        }
        rate = _calls_per_second(opts.get("integration_rate", defaults.integration_rate))
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    return sizes | seconds | {"integration_rate": rate}


def _calls_per_second(value: object) -> float:
    """``--integration-rate``: calls per second per home (``2``, ``0.5``; 0 = no limit)."""
    try:
        rate = float(str(value).strip())
    except ValueError:
        raise ValueError(
            f"--integration-rate: not a number of calls per second: {value!r} (e.g. 2, 0.5, 0)"
        ) from None
    if not rate >= 0 or rate == float("inf"):
        raise ValueError(f"--integration-rate: must be a finite number >= 0: {value!r}")
    return rate


#: RelayConfig field -> flag; each takes a size (``16G``, ``512M``) or a count; 0 = no limit.
LIMIT_FLAGS = {
    "max_body_bytes": "max-body",
    "tenant_max_requests": "tenant-max-requests",
    "client_max_requests": "client-max-requests",
    "tenant_bandwidth": "tenant-bandwidth",
    "tenant_burst": "tenant-burst",
    "upload_min_bytes": "upload-min-bytes",
    "account_max_requests": "account-max-requests",
    "integration_burst": "integration-burst",
    "integration_max_requests": "integration-max-requests",
    "integration_max_body": "integration-max-body",
}
#: RelayConfig field -> flag; each takes seconds (``10``, ``2.5``); 0 = no limit.
SECONDS_FLAGS = {
    "upload_window": "upload-window",
    "account_body_seconds": "account-body-timeout",
}


def cmd_relay(args: argparse.Namespace) -> int:
    from homeport.relay.app import Relay
    from homeport.tls.check import CertificateProblem
    from homeport.tls.openssl_groups import reexec_with_groups

    config = relay_config(args)
    _check_relay_files(config)
    _require_real_certificate(config)
    reexec_with_groups(config.data_dir)  # R-TLS-05: groups need OPENSSL_CONF at process start
    listeners = [("--listen", config.listen_host, config.listen_port)]
    if config.http_listen_port is not None:
        listeners.append(("--http-listen", config.http_listen_host, config.http_listen_port))
    if config.metrics_listen is not None:
        listeners.append(("--metrics-listen", *config.metrics_listen))
    for option, host, port in listeners:
        _check_can_listen(option, host, port)

    async def main() -> None:
        try:
            relay = Relay(config)
        except CertificateProblem as exc:
            raise ConfigError(str(exc)) from None
        try:
            await relay.start()
        except OSError as exc:  # lost a race for a port after the check above
            await relay.stop()
            raise ConfigError(f"cannot listen: {exc.strerror or exc}") from None
        print(f"Relay listening on {config.listen_host}:{config.listen_port}", flush=True)
        print(f"Account site: {config.account_origin}/", flush=True)
        print(relay.mail.summary(config), flush=True)
        await _until_signalled(relay.stop)

    _run(main())
    return 0


def _require_real_certificate(config: Any) -> None:
    """A public relay never falls back to the development CA without a word.

    Without ``--tls-cert``/``--tls-key`` or ``--acme-directory`` the relay would
    serve certificates from its own development CA, which no browser or
    add-on trusts: fine on ``localhost`` names (``homeport dev``, tests), a
    broken deployment anywhere else.
    """
    from homeport.relay.config import is_local_name

    if config.acme is not None or config.tls_cert is not None:
        return
    if is_local_name(config.account_host) and is_local_name(config.tenant_domain):
        return
    raise ConfigError(
        f"no certificate for {config.account_host} and *.{config.tenant_domain}: give "
        "--acme-directory (Let's Encrypt) or --tls-cert and --tls-key (the development CA "
        "serves only localhost names)"
    )


def _check_can_listen(option: str, host: str, port: int) -> None:
    """Bind once before starting, so a taken port or a wrong address is one clear line."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        raise ConfigError(f"{option} {host}:{port}: no such address or host name") from None
    family, kind, proto, _name, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio's server does
        try:
            sock.bind(address)
        except OSError as exc:
            raise ConfigError(f"{option} {host}:{port}: {exc.strerror}") from None


# ----------------------------------------------------------------------- addon


@dataclass(frozen=True)
class AddonSetup:
    """``homeport addon``'s settings, checked (``addon_config``)."""

    config: Any  # homeport.addon.client.AddonConfig
    ha_url_given: bool
    panel: Any  # homeport.addon.runtime.PanelSettings | None
    supervisor_token: str | None
    #: configuration.yaml and an API token for the panel's "trust the add-on" button.
    ha_config: Path | None = None
    ha_token: str | None = field(default=None, repr=False)


TUNNEL_TRANSPORTS = ("auto", "raw", "websocket")


def addon_config(args: argparse.Namespace) -> AddonSetup:
    """``homeport addon``'s settings, every one checked before anything is dialled;
    ``ConfigError`` or ``ValueError`` says what to fix."""
    from homeport.addon.client import AddonConfig
    from homeport.addon.options import OptionsError, check_ha_url, check_relay_url, load_options
    from homeport.addon.runtime import parse_panel
    from homeport.keys import parse_pinned_keys
    from homeport.pairing import PairingError, parse_pairing

    opts = options(args, "addon")
    relay = opts.get("relay")
    pins = opts.get("server_pubkey")
    pairing = opts.get("pairing")
    ha_url = opts.get("ha_url")
    pinned_keys = None
    options_file = opts.path("options")
    try:
        if pairing:
            if relay or pins:
                raise ConfigError("give --pairing, or --relay and --server-pubkey, not both")
            try:
                paired = parse_pairing(str(pairing))
            except PairingError as exc:
                raise ConfigError(f"--pairing: {exc}") from None
            relay, pinned_keys = paired.relay_url, paired.pinned_keys
        if options_file is not None:
            # The add-on's /data/options.json; flags and environment still win.
            addon_options = load_options(options_file)
            relay = relay or addon_options.relay_url
            ha_url = ha_url or addon_options.ha_url
            if not pins and pinned_keys is None:
                pinned_keys = addon_options.pinned_keys
        if not relay or not (pins or pinned_keys):
            raise ConfigError(
                "--pairing (or --relay and --server-pubkey, or --options) is required"
            )
        check_relay_url(str(relay), "--relay")
        if ha_url:
            check_ha_url(str(ha_url), "--ha-url")
    except OptionsError as exc:
        raise ConfigError(str(exc)) from None
    if pinned_keys is None:
        try:
            pinned_keys = tuple(parse_pinned_keys(str(pins)))
        except ValueError as exc:
            raise ConfigError(
                f"--server-pubkey: {exc} (copy it from `homeport keys show` on the relay)"
            ) from None
    relay_ca = opts.path("relay_ca")
    _check_ca_file(relay_ca, "--relay-ca")
    transport = str(opts.get("tunnel_transport") or "auto")
    if transport not in TUNNEL_TRANSPORTS:
        raise ConfigError(
            f"--tunnel-transport: {transport!r} is not one of {', '.join(TUNNEL_TRANSPORTS)}"
        )
    supervisor_token = os.environ.get("SUPERVISOR_TOKEN") or None
    panel = parse_panel(
        opts.get("panel_listen"), opts.get("panel_allow"), supervised=bool(supervisor_token)
    )
    config = AddonConfig(
        relay_url=str(relay),
        ha_url=str(ha_url or "http://127.0.0.1:8123"),
        state_dir=opts.path("state_dir", default_data_dir() / "addon") or Path("."),
        pinned_keys=pinned_keys,
        relay_ca=relay_ca,
        transport=transport,
    )
    ha_config, ha_token = _ha_setup(opts)
    return AddonSetup(config, bool(ha_url), panel, supervisor_token, ha_config, ha_token)


def _ha_setup(opts: Options) -> tuple[Path | None, str | None]:
    """``--ha-config`` (the folder) and the token of ``--ha-token-file``, checked now."""
    from homeport.keys import KeyFileError, read_secret_file

    folder, token_file = opts.path("ha_config"), opts.path("ha_token_file")
    if (folder is None) != (token_file is None) and not os.environ.get("SUPERVISOR_TOKEN"):
        raise ConfigError("--ha-config and --ha-token-file go together")
    config_file = None
    if folder is not None:
        config_file = folder / "configuration.yaml"
        check_readable_file(config_file, "--ha-config")
    token = None
    if token_file is not None:
        try:
            token = read_secret_file(token_file).decode("utf-8").strip()
        except FileNotFoundError:
            raise ConfigError(f"--ha-token-file {token_file}: no such file") from None
        except (KeyFileError, UnicodeDecodeError) as exc:
            raise ConfigError(f"--ha-token-file: {exc}") from None
        if not token:
            raise ConfigError(f"--ha-token-file {token_file} is empty")
    return config_file, token


def _check_ca_file(path: Path | None, option: str) -> None:
    """A CA file must exist and hold at least one PEM certificate."""
    import ssl

    check_readable_file(path, option)
    if path is None:
        return
    try:
        ssl.create_default_context(cafile=str(path))
    except ssl.SSLError:
        raise ConfigError(f"{option} {path}: no PEM certificate in it") from None


def cmd_addon(args: argparse.Namespace) -> int:
    try:
        setup = addon_config(args)
    except (ConfigError, ValueError) as exc:
        # The add-on's own contract: exit 2 with one line naming what to fix.
        message = str(exc) if isinstance(exc, ConfigError) else f"error: {exc}"
        print(message, file=sys.stderr)
        return 2
    from homeport.addon.runtime import AddonRuntime, StartupError

    runtime = AddonRuntime(
        setup.config,
        supervisor_token=setup.supervisor_token,
        panel=setup.panel,
        ha_url_given=setup.ha_url_given,
        ha_config=setup.ha_config,
        ha_token=setup.ha_token,
    )

    async def main() -> None:
        try:
            async with runtime.running():
                await _until_signalled(_nothing)
        except StartupError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None

    _run(main())
    return 0


async def _nothing() -> None:
    return None


# ----------------------------------------------------------------------- admin


def _database(args: argparse.Namespace) -> Any:
    from homeport.accounts.db import Database, default_sqlite_url

    opts = options(args, "relay")
    url = opts.get("database_url")
    if not url:
        data_dir = opts.path("data_dir", default_data_dir()) or default_data_dir()
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        url = default_sqlite_url(data_dir)
    return Database(str(url))


def _admin(
    args: argparse.Namespace,
    action: Callable[[Any], Coroutine[Any, Any, int]],
    *,
    breached: Any = None,
    news: list[Any] | None = None,
) -> int:
    """Run ``action`` on the relay's accounts; ``breached``: the breached-password check;
    ``news``: withdrawals ``action`` adds, told to the relay nodes (with links it made)."""
    from homeport.accounts.service import Accounts
    from homeport.relay.cluster.messages import LinkedNotice

    told: list[Any] = news if news is not None else []
    # Checked before anything changes: a wrong setting must not leave the nodes untold.
    cluster = _cluster(options(args, "relay"))
    tell = None
    if cluster:
        from homeport.relay.cluster.node import load_cluster_key

        try:
            tell = (cluster["redis_url"], load_cluster_key(cluster["cluster_key_file"]))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    async def main() -> int:
        database = _database(args)
        await database.connect()
        try:
            await database.migrate()
            accounts = Accounts(database, breached_passwords=breached)
            accounts.on_linked(lambda key: told.append(LinkedNotice.of_key(key)))
            done = await action(accounts)
        finally:
            await database.close()
        if done == 0 and told and tell is not None:
            await _tell_nodes(*tell, told)
        return done

    return asyncio.run(main())


async def _tell_nodes(redis_url: str, key: bytes, news: list[Any]) -> None:
    """Publish ``news`` so every relay node acts at once (``homeport.relay.cluster.announce``);
    if Redis is away, the nodes' sweep (5 s) and link poll (2 s) still find the change in
    the database, and the operator is told so."""
    from homeport.relay.cluster.announce import AnnounceFailed, announce

    try:
        await announce(redis_url, key, news)
    except AnnounceFailed as exc:
        print(
            f"warning: the relay nodes were not told at once (Redis: {exc}); they find the "
            "change in the database within 5 s",
            file=sys.stderr,
        )
        return
    print("Told the relay nodes (Redis)")


def cmd_user_create(args: argparse.Namespace) -> int:
    from homeport.accounts.breached import BreachedPasswords
    from homeport.accounts.errors import AccountsError
    from homeport.accounts.passwords import PasswordPolicyError

    config = relay_config(args, serving=False)
    breached = (
        BreachedPasswords(config.breached_passwords_url, timeout=config.breached_passwords_timeout)
        if config.breached_passwords_url
        else None
    )

    if sys.stdin.isatty():  # a person at a terminal: ask, without echoing it
        import getpass

        password = getpass.getpass("Password (at least 15 characters): ")
    else:  # a pipe or a file: one line
        password = sys.stdin.readline().rstrip("\r\n")

    async def action(accounts: Any) -> int:
        try:
            user = await accounts.create_user(args.email, password)
        except (AccountsError, PasswordPolicyError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"Created user {user.email}")
        return 0

    return _admin(args, action, breached=breached)


def cmd_user_list(args: argparse.Namespace) -> int:
    async def action(accounts: Any) -> int:
        for user in await accounts.list_users():
            print(user.email)
        return 0

    return _admin(args, action)


def cmd_user_disable(args: argparse.Namespace) -> int:
    from homeport.accounts.errors import AccountsError
    from homeport.accounts.operator import Operator
    from homeport.relay.live import Withdrawal

    disable = args.user_command == "disable"
    news: list[Any] = []

    async def action(accounts: Any) -> int:
        operator = Operator(accounts)
        try:
            user = await operator.user(args.email)
            await accounts.set_user_disabled(user.id, disable)
        except AccountsError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        if disable:
            # Its sessions, and the app links of its homes (they stop with their owner).
            news.append(Withdrawal.user(user.id))
            for home in await operator.owned_homes(user):
                for link in await accounts.sharing.app_links(home):
                    news.append(Withdrawal.app_link(link.id))
        done = "Disabled (every session ended)" if disable else "Enabled"
        print(f"{done}: {user.email}")
        return 0

    return _admin(args, action, news=news)


def cmd_user_delete(args: argparse.Namespace) -> int:
    from homeport.accounts.errors import AccountsError
    from homeport.accounts.operator import Operator
    from homeport.relay.cluster.announce import session_withdrawals
    from homeport.relay.live import Ending, Withdrawal

    news: list[Any] = []

    async def action(accounts: Any) -> int:
        operator = Operator(accounts)
        try:
            user = await operator.user(args.email)
            if not args.yes:
                owned = await operator.owned_homes(user)
                print(
                    f"error: this deletes {user.email} and unlinks the {len(owned)} home(s) it "
                    "owns; run again with --yes",
                    file=sys.stderr,
                )
                return 1
            user, deleted = await operator.delete_user(args.email)
        except AccountsError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        # What the account site's own deletion cuts (relay/site/privacy.py cut_deleted).
        news.extend(Withdrawal.instance(home) for home in deleted.homes)
        news.extend(Withdrawal.app_link(link) for link in deleted.app_links)
        news.extend(session_withdrawals(deleted.sessions))
        news.append(Withdrawal.user(deleted.user_id, why=Ending.ACCESS_WITHDRAWN))
        unlinked = f"; unlinked {', '.join(deleted.homes)}" if deleted.homes else ""
        left = (
            f"; removed from {len(deleted.memberships)} shared home(s)"
            if deleted.memberships
            else ""
        )
        print(f"Deleted {user.email}{unlinked}{left}")
        return 0

    return _admin(args, action, news=news)


def cmd_user_reset_factor(args: argparse.Namespace) -> int:
    from homeport.accounts.errors import AccountsError
    from homeport.accounts.operator import Operator
    from homeport.relay.live import Withdrawal

    config = relay_config(args, serving=False)
    news: list[Any] = []

    async def action(accounts: Any) -> int:
        try:
            result = await Operator(accounts).reset_second_factor(args.email)
        except AccountsError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        news.append(Withdrawal.user(result.user.id))
        print(
            f"Reset the second factor of {result.user.email}: authenticator app "
            f"{'removed' if result.totp else 'none'}, {result.passkeys} passkey(s) removed, "
            f"{result.sessions} session(s) ended"
        )
        print(await _mail_reset_notice(config, result.user.email))
        return 0

    return _admin(args, action, news=news)


async def _mail_reset_notice(config: Any, email: str) -> str:
    """Tell the owner by mail (when the relay sends mail); the line to print."""
    import datetime as dt

    from homeport.mail.mailer import SmtpMailer
    from homeport.mail.messages import MailWriter

    if config.smtp is None:
        return "Not mailed: no --smtp-host (tell the owner yourself)"
    mail = MailWriter(config.account_origin).security_change(
        email,
        what="the relay's operator removed your second factor (authenticator app, recovery "
        "codes and passkeys) and ended every session; sign in and set up a new one under "
        "Security",
        moment=dt.datetime.now(dt.UTC),
        ip=None,
        user_agent="",
    )
    try:
        await SmtpMailer(config.smtp).send(mail)
    except Exception as exc:
        return f"Not mailed: {type(exc).__name__} (tell the owner yourself)"
    return f"Mailed {email}"


def cmd_instance_unlink(args: argparse.Namespace) -> int:
    from homeport.relay.live import Withdrawal

    news: list[Any] = []

    async def action(accounts: Any) -> int:
        if not await accounts.unlink_instance(args.instance):
            print(f"error: no home {args.instance}", file=sys.stderr)
            return 1
        news.append(Withdrawal.instance(args.instance))
        print(
            f"Unlinked {args.instance}: its sessions and app links are gone; its add-on gets "
            "a new link code when it next connects"
        )
        return 0

    return _admin(args, action, news=news)


def cmd_link(args: argparse.Namespace) -> int:
    from homeport.accounts.errors import AccountsError

    async def action(accounts: Any) -> int:
        try:
            instance = await accounts.link_instance(args.code, args.email)
        except AccountsError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"Linked instance {instance.id} to {args.email}")
        return 0

    return _admin(args, action)


def cmd_instance_list(args: argparse.Namespace) -> int:
    from homeport.relay.config import RelayConfig

    config: RelayConfig = relay_config(args, serving=False)

    async def action(accounts: Any) -> int:
        rows = [
            {
                "id": row.id,
                "owner": row.owner_email,
                "name": row.name,
                "connected": row.connected,
                "url": config.tenant_origin(row.id),
            }
            for row in await accounts.list_instances()
        ]
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            for row in rows:
                state = "connected" if row["connected"] else "offline"
                print(f"{row['id']}  {row['owner']}  {state}  {row['url']}")
        return 0

    return _admin(args, action)


# ------------------------------------------------------------------------ keys


def cmd_keys_show(args: argparse.Namespace) -> int:
    from homeport.keys import key_id, load_or_create_private_key, public_key_text

    config = relay_config(args, serving=False)
    key = load_or_create_private_key(config.server_key_path)
    public = key.public_key()
    print(public_key_text(public))
    print(f"# key id {key_id(public)}, from {config.server_key_path}", file=sys.stderr)
    return 0


# ------------------------------------------------------------------------- dev


def cmd_dev(args: argparse.Namespace) -> int:
    from homeport.dev import run_dev
    from homeport.mail.options import signup_open, smtp_settings
    from homeport.mail.settings import MailSettingsError

    try:
        opts = options(args, "relay")
        args.smtp = smtp_settings(opts)
        args.signup_open = signup_open(opts, args.smtp, dev=True)
    except MailSettingsError as exc:
        raise SystemExit(f"error: {exc}") from exc
    _run(run_dev(args))
    return 0


def cmd_cluster(args: argparse.Namespace) -> int:
    from homeport.cluster_local.run import run_cluster

    _run(run_cluster(args))
    return 0


# ---------------------------------------------------------------------- parser


def _relay_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", help="TOML file with a [relay] section; unknown keys in it are errors"
    )
    parser.add_argument("--listen", help="address:port to listen on (default 127.0.0.1:8443)")
    parser.add_argument(
        "--account-host",
        dest="account_host",
        help="host of the account site and of /v1/tunnel (default homeport.localhost)",
    )
    parser.add_argument(
        "--tenant-domain",
        dest="tenant_domain",
        help="homes are <instance-id>.<tenant-domain>; a registrable domain of its own "
        "(default home.localhost)",
    )
    parser.add_argument(
        "--public-port",
        dest="public_port",
        type=int,
        help="port in the URLs people and add-ons use, when a port mapping sits in front "
        "(default: the listening port)",
    )
    parser.add_argument(
        "--data-dir",
        dest="data_dir",
        help="database, keys and certificates (default $XDG_DATA_HOME/homeport)",
    )
    parser.add_argument(
        "--database-url",
        dest="database_url",
        help="e.g. postgresql+asyncpg://homeport@db/homeport (default: SQLite in --data-dir)",
    )
    parser.add_argument(
        "--tls-cert",
        dest="tls_cert",
        help="PEM chain, leaf first, no root; with --tls-key. Without it and without "
        "--acme-directory only localhost names are served (development CA)",
    )
    parser.add_argument("--tls-key", dest="tls_key", help="the private key of --tls-cert (PEM)")
    parser.add_argument(
        "--server-key",
        dest="server_key",
        help="the relay's Ed25519 signing key, pinned by add-ons (default "
        "<data-dir>/server-key.pem, created if missing)",
    )
    parser.add_argument(
        "--security-contact",
        dest="security_contact",
        help="Contact: of /.well-known/security.txt, e.g. mailto:security@example.com",
    )
    parser.add_argument(
        "--security-policy",
        dest="security_policy",
        help="Policy: of /.well-known/security.txt (a URL)",
    )
    parser.add_argument(
        "--tls-profile",
        dest="tls_profile",
        choices=["modern", "intermediate"],
        help="modern (default): TLS 1.3 only; intermediate: also TLS 1.2 with ECDHE+AEAD suites",
    )
    parser.add_argument(
        "--http-listen",
        dest="http_listen",
        help="address:port for plain HTTP (e.g. 0.0.0.0:80); default off. It only "
        "redirects (308) to https:// on the same host, never serves content",
    )
    parser.add_argument(
        "--metrics-listen",
        dest="metrics_listen",
        help="address:port for Prometheus GET /metrics over plain HTTP (e.g. 127.0.0.1:9464); "
        "default off. Bind it to loopback or a private interface: it has no authentication",
    )
    parser.add_argument(
        "--link-poll",
        dest="link_poll_seconds",
        help="seconds between checks for a home linked by `homeport admin link` (default 2)",
    )
    parser.add_argument(
        "--breached-passwords-url",
        dest="breached_passwords_url",
        help="check new passwords against a breached-password range API (k-anonymity: only "
        "5 hex characters of the SHA-1 leave the relay), e.g. https://api.pwnedpasswords.com; "
        "default off. If it does not answer, the password is let through (logged)",
    )
    parser.add_argument(
        "--redis-url",
        dest="redis_url",
        help="run as one node of several on one PostgreSQL database: the Redis that carries "
        "revocations between nodes, e.g. redis://10.0.0.5:6379/0 (default: a single relay)",
    )
    parser.add_argument(
        "--cluster-key-file",
        dest="cluster_key_file",
        help="with --redis-url: the key that seals messages between nodes (at least 32 "
        "bytes; the same file on every node; e.g. openssl rand -base64 48 > cluster.key)",
    )
    parser.add_argument(
        "--proxy-protocol-from",
        dest="proxy_protocol_from",
        help="behind HAProxy with send-proxy-v2: its networks, comma-separated (e.g. "
        "10.0.0.5/32); connections from them must start with a PROXY v2 header naming "
        "the client, and connections from anywhere else are refused (default: off)",
    )
    parser.add_argument(
        "--node-name",
        dest="node_name",
        help="with --redis-url: this node's name in logs, metrics and the presence "
        "directory (a random suffix is added per process; default: node)",
    )
    parser.add_argument(
        "--breached-passwords-timeout",
        dest="breached_passwords_timeout",
        help="seconds the breached-password check may take (default 3)",
    )
    from homeport.relay.oidc_settings import add_oidc_arguments

    add_oidc_arguments(parser)
    from homeport.mail.options import add_mail_arguments

    add_mail_arguments(parser)
    limits = parser.add_argument_group("limits on tenant hosts (0 = no limit)")
    limits.add_argument("--max-body", dest="max_body_bytes", help="request body cap (16G)")
    limits.add_argument(
        "--tenant-max-requests", dest="tenant_max_requests", help="open requests per home (256)"
    )
    limits.add_argument(
        "--client-max-requests", dest="client_max_requests", help="open requests per address (512)"
    )
    limits.add_argument(
        "--tenant-bandwidth", dest="tenant_bandwidth", help="bytes/s per home and direction (0)"
    )
    limits.add_argument("--tenant-burst", dest="tenant_burst", help="bandwidth burst (4M)")
    limits.add_argument(
        "--upload-min-bytes",
        dest="upload_min_bytes",
        help="a request body must move at least this much per --upload-window (16K)",
    )
    limits.add_argument(
        "--upload-window", dest="upload_window", help="seconds for --upload-min-bytes (30)"
    )
    calls = parser.add_argument_group(
        "limits on integrations' calls past the gate, per home (0 = no limit)"
    )
    calls.add_argument("--integration-rate", dest="integration_rate", help="calls per second (2)")
    calls.add_argument("--integration-burst", dest="integration_burst", help="call burst (60)")
    calls.add_argument(
        "--integration-max-requests", dest="integration_max_requests", help="calls open (16)"
    )
    calls.add_argument(
        "--integration-max-body", dest="integration_max_body", help="request body cap (1M)"
    )
    account = parser.add_argument_group("limits on the account site (0 = no limit)")
    account.add_argument(
        "--account-body-timeout",
        dest="account_body_seconds",
        help="seconds for a whole request body to arrive (10)",
    )
    account.add_argument(
        "--account-max-requests",
        dest="account_max_requests",
        help="open requests per address, IPv6 per /64 (32)",
    )
    add_acme_arguments(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="homeport", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"homeport {__version__}")
    parser.add_argument(
        "--log-level",
        type=str.lower,
        choices=LOG_LEVELS,
        help="debug, info, warning or error (default: info; warning for admin and keys, "
        "so their output is not mixed with log lines); or HOMEPORT_LOG_LEVEL",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    relay = sub.add_parser("relay", help="run the relay")
    _relay_options(relay)
    relay.set_defaults(func=cmd_relay)

    addon = sub.add_parser("addon", help="run the add-on beside Home Assistant")
    addon.add_argument("--config", help="TOML config file ([addon] section)")
    addon.add_argument(
        "--pairing",
        help="the relay's pairing string (homeport+wss://…#ed25519:…, from its Add a home "
        "page): the relay's address and key in one, in place of --relay and --server-pubkey",
    )
    addon.add_argument("--relay", help="wss://relay-host/v1/tunnel")
    addon.add_argument(
        "--ha-url",
        dest="ha_url",
        help="Home Assistant base URL, http(s)://host[:port] (default: asked from the "
        "Supervisor, or found on 127.0.0.1 / ::1 port 8123)",
    )
    addon.add_argument(
        "--ha-config",
        dest="ha_config",
        help="Home Assistant's configuration folder, so the panel can add the proxy settings "
        "to configuration.yaml when you ask (needs --ha-token-file; the Supervisor gives both)",
    )
    addon.add_argument(
        "--ha-token-file",
        dest="ha_token_file",
        help="file (mode 0600) holding a Home Assistant long-lived access token, for checking "
        "the configuration and restarting Home Assistant after that change",
    )
    addon.add_argument(
        "--state-dir",
        dest="state_dir",
        help="holds the add-on's identity key (default $XDG_DATA_HOME/homeport/addon)",
    )
    addon.add_argument("--relay-ca", dest="relay_ca", help="extra CA file to trust")
    addon.add_argument("--server-pubkey", dest="server_pubkey", help="pinned relay key(s)")
    addon.add_argument(
        "--tunnel-transport",
        dest="tunnel_transport",
        choices=TUNNEL_TRANSPORTS,
        help="auto (default): the tunnel on TLS itself, or inside a WebSocket if the relay "
        "does not offer that; raw or websocket: only that one (e.g. behind a proxy that "
        "passes HTTP only)",
    )
    addon.add_argument(
        "--panel-listen", dest="panel_listen", help="host:port of the ingress panel, or off"
    )
    addon.add_argument(
        "--panel-allow", dest="panel_allow", help="peer addresses the panel serves (ingress proxy)"
    )
    addon.add_argument(
        "--options", help="add-on options JSON (e.g. /data/options.json), after flags and env"
    )
    addon.set_defaults(func=cmd_addon)

    admin = sub.add_parser("admin", help="manage accounts and instances")
    admin_sub = admin.add_subparsers(dest="admin_command", required=True)
    user = admin_sub.add_parser("user", help="accounts")
    user_sub = user.add_subparsers(dest="user_command", required=True)
    create = user_sub.add_parser(
        "create", help="create an account (asks for the password, or reads one line of stdin)"
    )
    create.add_argument("email")
    _relay_options(create)
    create.set_defaults(func=cmd_user_create)
    listing = user_sub.add_parser("list", help="list accounts")
    _relay_options(listing)
    listing.set_defaults(func=cmd_user_list)
    for name, what in (
        ("disable", "disable an account and end its sessions"),
        ("enable", "enable a disabled account"),
    ):
        toggle = user_sub.add_parser(name, help=what)
        toggle.add_argument("email")
        _relay_options(toggle)
        toggle.set_defaults(func=cmd_user_disable)
    remove = user_sub.add_parser(
        "delete", help="delete an account and unlink the homes it owns (audited)"
    )
    remove.add_argument("email")
    remove.add_argument("--yes", action="store_true", help="really delete (no undo)")
    _relay_options(remove)
    remove.set_defaults(func=cmd_user_delete)
    reset = user_sub.add_parser(
        "reset-second-factor",
        help="remove a lost authenticator app, recovery codes and passkeys; end every "
        "session; audited, and mailed to the owner when mail is configured",
    )
    reset.add_argument("email")
    _relay_options(reset)
    reset.set_defaults(func=cmd_user_reset_factor)
    link = admin_sub.add_parser("link", help="link an add-on to an account by its code")
    link.add_argument("code")
    link.add_argument("email")
    _relay_options(link)
    link.set_defaults(func=cmd_link)
    instance = admin_sub.add_parser("instance", help="instances")
    instance_sub = instance.add_subparsers(dest="instance_command", required=True)
    inst_list = instance_sub.add_parser("list", help="list instances")
    inst_list.add_argument("--json", action="store_true", help="a JSON list instead of text")
    _relay_options(inst_list)
    inst_list.set_defaults(func=cmd_instance_list)
    unlink = instance_sub.add_parser(
        "unlink", help="unlink a home from its account (its add-on needs a new link code)"
    )
    unlink.add_argument("instance", help="the home's id (admin instance list)")
    _relay_options(unlink)
    unlink.set_defaults(func=cmd_instance_unlink)

    keys = sub.add_parser("keys", help="the relay's signing key")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    show = keys_sub.add_parser("show", help="print the public key for pinning")
    _relay_options(show)
    show.set_defaults(func=cmd_keys_show)

    dev = sub.add_parser("dev", help="relay + add-on + Home Assistant (or a stand-in) locally")
    dev.add_argument(
        "--ha-url",
        dest="ha_url",
        default="http://127.0.0.1:8123",
        help="Home Assistant to use if it answers (default http://127.0.0.1:8123; "
        "otherwise a built-in stand-in)",
    )
    dev.add_argument(
        "--data-dir",
        dest="data_dir",
        default=".homeport/dev",
        help="development state (default .homeport/dev)",
    )
    dev.add_argument(
        "--port", type=int, default=8443, help="loopback port of the relay (default 8443)"
    )
    from homeport.mail.options import add_mail_arguments

    add_mail_arguments(dev)
    dev.set_defaults(func=cmd_dev)

    cluster = sub.add_parser(
        "cluster", help="3 relay nodes + HAProxy + PostgreSQL + Redis + an add-on, locally"
    )
    cluster.add_argument(
        "--ha-url",
        dest="ha_url",
        default="http://127.0.0.1:8123",
        help="Home Assistant to use if it answers (default: a stand-in)",
    )
    cluster.add_argument(
        "--data-dir",
        dest="data_dir",
        default=".homeport/cluster",
        help="the cluster's state (default .homeport/cluster)",
    )
    cluster.add_argument(
        "--port",
        type=int,
        default=8443,
        help="loopback port of HAProxy, the public address (default 8443)",
    )
    cluster.set_defaults(func=cmd_cluster)
    return parser


LOG_LEVELS = ("debug", "info", "warning", "error")
#: Commands whose output is for a person or a script: logs only when something is wrong.
QUIET_COMMANDS = ("admin", "keys")


def log_level(args: argparse.Namespace) -> str:
    """``--log-level``, else ``HOMEPORT_LOG_LEVEL``, else the command's default."""
    level = args.log_level or os.environ.get("HOMEPORT_LOG_LEVEL", "").strip().lower()
    if not level:
        return "warning" if args.command in QUIET_COMMANDS else "info"
    if level not in LOG_LEVELS:
        raise ConfigError(f"HOMEPORT_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}: {level!r}")
    return level


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if (missing_extra := relay_extra_error(args.command)) is not None:
        raise SystemExit(missing_extra)  # one line on stderr, exit status 1
    check_environment(known_options())
    setup_logging(log_level(args))
    result: int = args.func(args)
    return result


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
