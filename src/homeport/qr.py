"""QR codes as inline SVG, for pages under a strict CSP (the account site, the add-on panel)."""

from __future__ import annotations

import segno
from markupsafe import Markup


def qr_svg(text: str, title: str = "QR code of the app link") -> Markup:
    """An inline SVG QR code (no script, no style attribute: fits the strict CSP)."""
    svg = segno.make(text, error="m").svg_inline(scale=4, dark="#000", light="#fff", title=title)
    return Markup(svg)  # noqa: S704 - segno's own markup of a URL we built
