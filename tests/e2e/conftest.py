"""The end-to-end tests' one ``stack`` fixture: a whole Homeport on loopback per test.

A test that takes ``stack`` gets :func:`stack.start_stack` running (the real relay
and add-on in this process, linked to ``owner@example.com``, in front of the
aiohttp stand-in for Home Assistant), with the session's development CA
(``dev_ca``), so the session's Chromium trusts it.  Every test gets its own
relay data dir, database, port and add-on.

Variants, by marker on a test or a module (``pytestmark = ...``)::

    @pytest.mark.homeassistant                # in front of the session's real Home Assistant
    @pytest.mark.stack(housekeeping=False)    # no background sweeps: only the test cuts
    @pytest.mark.stack(signup=True)           # any other start_stack / RelayConfig option

Options that need another fixture come from a module's own ``stack_options``::

    @pytest.fixture
    def stack_options(idp: StandInIdp) -> dict[str, Any]:
        return {"oidc_providers": (provider_for(idp),)}

Markers and ``stack_options`` merge (``stack_options`` wins).  Tests that need
two stacks, or a stack started half-way through, call ``start_stack`` directly
(with ``ca=dev_ca`` if a Chromium must trust it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from header_backend import Seen, recording_backend
from stack import Stack, start_stack

from homeport.tls.devca import DevCA


def stack_marker_options(node: pytest.Item) -> dict[str, Any]:
    """The ``stack`` markers' options, the closest (the test's own) winning."""
    options: dict[str, Any] = {}
    for marker in reversed(list(node.iter_markers("stack"))):
        if marker.args:
            raise TypeError("pytest.mark.stack takes keyword options only")
        options.update(marker.kwargs)
    return options


@pytest.fixture
def stack_options() -> dict[str, Any]:
    """``start_stack`` options for ``stack``; override in a module to add fixture-made ones."""
    return {}


@pytest.fixture
def stack_settings(request: pytest.FixtureRequest, stack_options: dict[str, Any]) -> dict[str, Any]:
    """Markers and ``stack_options`` resolved into ``start_stack`` options.

    A plain fixture, so the session's Home Assistant is started (on its own event
    loop) before the test's loop runs ``stack``."""
    options = {**stack_marker_options(request.node), **stack_options}
    real_ha = request.node.get_closest_marker("homeassistant") is not None
    if options.pop("home_assistant", real_ha):
        options["ha_url"] = request.getfixturevalue("home_assistant").url
    return options


@pytest_asyncio.fixture
async def stack(
    tmp_path: Path, dev_ca: DevCA, stack_settings: dict[str, Any]
) -> AsyncIterator[Stack]:
    options = dict(stack_settings)
    housekeeping = options.pop("housekeeping", True)
    async with start_stack(tmp_path, ca=dev_ca, **options) as running:
        if not housekeeping:
            await running.relay.housekeeping.stop()
        yield running


@pytest_asyncio.fixture
async def recorded(tmp_path: Path, dev_ca: DevCA) -> AsyncIterator[tuple[Stack, Seen]]:
    """A stack whose backend records every request head it receives (and answers
    ``/headers`` with the response fields it is asked for): ``header_backend.py``."""
    async with (
        recording_backend() as (backend, seen),
        start_stack(tmp_path, ca=dev_ca, ha_url=backend) as stack,
    ):
        yield stack, seen
