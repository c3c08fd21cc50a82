"""``StreamClosed`` reads as before though its text is made only when asked for."""

from __future__ import annotations

import pickle

import pytest

from homeport.protocol import ErrorCode
from homeport.tunnel.stream import StreamClosed


def test_text_names_the_code_and_the_reason() -> None:
    error = StreamClosed(ErrorCode.CANCEL, "released")
    assert str(error) == "CANCEL: released"
    assert (error.code, error.reason) == (ErrorCode.CANCEL, "released")


def test_raised_and_caught_it_keeps_its_code_and_text() -> None:
    with pytest.raises(StreamClosed, match=r"^REFUSED: tunnel full$") as caught:
        raise StreamClosed(ErrorCode.REFUSED, "tunnel full")
    assert caught.value.code is ErrorCode.REFUSED


def test_it_survives_a_copy_through_pickle() -> None:
    # Its arguments are what it was made from, so the usual copies rebuild it whole.
    copy = pickle.loads(pickle.dumps(StreamClosed(ErrorCode.INTERNAL, "handler failed")))
    assert str(copy) == "INTERNAL: handler failed"
    assert copy.code is ErrorCode.INTERNAL
