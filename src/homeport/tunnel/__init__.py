"""The asyncio side of the tunnel: a :class:`TunnelConnection` driven over a WebSocket."""
