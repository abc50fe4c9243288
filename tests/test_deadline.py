"""pipeline.deadline.call_within: one call bounded as a whole."""

from __future__ import annotations

import threading
import time

import pytest

from pipeline.deadline import Late, call_within


def test_a_call_that_finishes_in_time_gives_its_result_or_its_exception() -> None:
    assert call_within(5.0, lambda: 42) == 42
    with pytest.raises(ZeroDivisionError):
        call_within(5.0, lambda: 1 / 0)


def test_a_late_call_raises_late_at_the_deadline_and_its_result_goes_to_abandoned() -> None:
    release, handed = threading.Event(), []
    got = threading.Event()

    def slow() -> str:
        release.wait(10)
        return "response"

    started = time.monotonic()
    with pytest.raises(Late, match=r"no answer within 0.2s"):
        call_within(0.2, slow, abandoned=lambda r: (handed.append(r), got.set()))
    assert time.monotonic() - started < 2.0
    release.set()
    assert got.wait(5) and handed == ["response"]  # e.g. closed there, never leaked to the caller


def test_a_late_call_that_fails_hands_nothing_to_abandoned() -> None:
    release, handed = threading.Event(), []

    def slow_failure() -> None:
        release.wait(10)
        raise OSError("reset")

    with pytest.raises(Late):
        call_within(0.1, slow_failure, abandoned=handed.append)
    release.set()
    time.sleep(0.2)
    assert handed == []
