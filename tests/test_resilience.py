"""The circuit breaker and RedisCall, without Redis: every call gives the breaker a verdict,
so a half-open probe always resolves (an answer, no answer, or abandoned)."""

from __future__ import annotations

import asyncio

import pytest

from tiercache import CacheUnavailable, RedisReplyError
from tiercache.core.resilience import CircuitBreaker, RedisCall, RedisErrors
from tiercache.core.shared import Shared


class NoAnswer(Exception):
    """Stands for the client's connection errors."""


class ErrorReply(Exception):
    """Stands for the client's error replies."""


@pytest.fixture
def shared(timer):
    sh = Shared(name="t", errors=RedisErrors(unavailable=(NoAnswer,), reply=(ErrorReply,)), invalidation=None)
    sh.breaker = CircuitBreaker(failure_threshold=2, reset_timeout=1.0, timer=timer)
    return sh


def call(shared, outcome=None):
    """One round trip through RedisCall that ends with outcome (None: a reply)."""
    with RedisCall(shared, "get"):
        if outcome is not None:
            raise outcome


def half_open(shared, timer):
    for _ in range(2):
        with pytest.raises(CacheUnavailable):
            call(shared, NoAnswer("reset"))
    assert shared.breaker.state == "open"
    with pytest.raises(CacheUnavailable, match="circuit open"):
        call(shared)
    timer.advance(1.0)


def test_no_answer_opens_the_breaker_and_a_reply_closes_it(shared, timer):
    half_open(shared, timer)
    call(shared)  # the probe gets an answer
    assert shared.breaker.state == "closed"
    assert shared.stats.l2_errors == 2 and shared.stats.short_circuits == 1


def test_an_error_reply_to_the_probe_is_an_answer(shared, timer):
    half_open(shared, timer)
    with pytest.raises(RedisReplyError, match="WRONGTYPE") as raised:
        call(shared, ErrorReply("WRONGTYPE"))
    assert isinstance(raised.value.__cause__, ErrorReply)
    assert shared.breaker.state == "closed"
    call(shared)


@pytest.mark.parametrize("ending", [asyncio.CancelledError(), KeyboardInterrupt(), RuntimeError("ours")])
def test_a_probe_that_ends_without_a_verdict_lets_another_through(shared, timer, ending):
    half_open(shared, timer)
    with pytest.raises(type(ending)):
        call(shared, ending)
    assert shared.breaker.state == "half_open"
    call(shared)  # the next call is a probe, not refused
    assert shared.breaker.state == "closed"


def test_a_failed_probe_opens_it_again(shared, timer):
    half_open(shared, timer)
    with pytest.raises(CacheUnavailable):
        call(shared, NoAnswer("still down"))
    assert shared.breaker.state == "open"
    with pytest.raises(CacheUnavailable, match="circuit open"):
        call(shared)


def test_an_idle_process_reports_half_open_once_the_reset_time_has_passed(shared, timer):
    for _ in range(2):
        with pytest.raises(CacheUnavailable):
            call(shared, NoAnswer("down"))
    assert shared.breaker_state() == "open"
    timer.advance(0.5)
    assert shared.breaker_state() == "open"
    timer.advance(0.5)  # nobody called: the next call would be a probe, and that is what shows
    assert shared.breaker_state() == "half_open" and shared.breaker.state == "open"
    call(shared)
    assert shared.breaker_state() == "closed"
