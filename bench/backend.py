"""The benchmark's backend: the stand-in, in its own process, on two loopback sites.

* ``--tls-port`` serves it over TLS (the "direct" path the browser-like
  client uses), with ``homeport.tls.context.server_context`` and a
  certificate from an independent dev CA;
* ``--plain-port`` serves the very same application over plain HTTP, for the
  add-on's hop to "Home Assistant" (plain on loopback, as an add-on beside
  Home Assistant usually is).

Run by ``bench/run.py``; prints ``ready`` once both sites listen and stops on
SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from pathlib import Path

import uvloop
from aiohttp import web

from homeport.standin import build_app
from homeport.tls.context import server_context


async def serve(args: argparse.Namespace) -> None:
    runner = web.AppRunner(build_app(), access_log=None)
    await runner.setup()
    tls = server_context(Path(args.cert), Path(args.key))
    await web.TCPSite(runner, "127.0.0.1", args.tls_port, ssl_context=tls).start()
    await web.TCPSite(runner, "127.0.0.1", args.plain_port).start()
    print("ready", flush=True)
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, done.set)
    await done.wait()
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tls-port", type=int, required=True)
    parser.add_argument("--plain-port", type=int, required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    uvloop.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
