"""The companion-app steps read the same on the account site and in the add-on's panel."""

from __future__ import annotations

import re
from importlib import resources


def _steps(package: str, template: str) -> list[str]:
    text = resources.files(package).joinpath("templates", template).read_text("utf-8")
    steps = re.search(r"<ol[^>]*>(.*?)</ol>(.*?)</p>", text, re.S)
    assert steps is not None, template
    items = re.findall(r"<li>(.*?)</li>", steps.group(1), re.S)
    hint = re.sub(r"\s+", " ", steps.group(2)).strip()
    return [re.sub(r"\s+", " ", item).strip() for item in items] + [hint]


def test_the_app_steps_match() -> None:
    site = _steps("homeport.relay", "companion_steps.html")
    panel = _steps("homeport.addon", "app_link.html")
    assert len(site) == 5
    assert site == panel
