"""The tenant data plane: browser connections on tenant and app-link hosts.

Served at the protocol level on uvloop, not through aiohttp's application
layer: ``http1`` reads requests with llhttp (``httptools``, the parser under
uvicorn and aiohttp) into events, ``connection`` drives one browser
connection with callbacks (no task per exchange), ``exchange`` carries one
request or WebSocket through its tunnel stream, and ``websocket`` speaks RFC
6455 to the browser with the ``websockets`` library's sans-I/O core.  The
gate and every policy stay in :mod:`homeport.relay.tenant`.
"""
