"""The sidecar's request limits (`agent_sidecar.deadlines`): one timer for every request
in flight, behaving like `asyncio.timeout` for the code they guard."""

from __future__ import annotations

import asyncio

import pytest
from agent_sidecar.deadlines import Deadlines


async def test_a_block_that_runs_out_of_time_raises_timeout_error() -> None:
    """Tried: a block that sleeps far past a 0.2 s limit. It is cut and raises
    TimeoutError (what the handler answers 504 for), well before its sleep would end."""
    deadlines = Deadlines(0.2)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        async with deadlines.limit():
            await asyncio.sleep(30)
    assert loop.time() - started < 5


async def test_a_block_that_ends_in_time_is_untouched_and_leaves_no_timer() -> None:
    """Tried: blocks that end before their limit. Their result stands, nothing stays
    watched, and once the last one is over the periodic check stops."""
    deadlines = Deadlines(0.2)
    async with deadlines.limit():
        await asyncio.sleep(0)
    assert deadlines._running == {}
    await asyncio.sleep(0.1)  # one check finds nothing in flight and does not re-arm
    assert deadlines._timer is None


async def test_limits_in_flight_expire_each_at_its_own_time() -> None:
    """Tried: three requests under one set of limits, two quick and one hung. Only the
    hung one times out; the others finish with their own result."""
    deadlines = Deadlines(0.3)

    async def request(seconds: float) -> str:
        async with deadlines.limit():
            await asyncio.sleep(seconds)
        return "answered"

    results = await asyncio.gather(
        request(0.01), request(30), request(0.05), return_exceptions=True
    )
    assert results[0] == "answered" and results[2] == "answered"
    assert isinstance(results[1], TimeoutError)


async def test_a_cancellation_from_outside_stays_a_cancellation() -> None:
    """Tried: the caller goes away (aiohttp cancels the handler) while a limit guards the
    block. The task ends cancelled, not with a TimeoutError, and the limit is dropped."""
    deadlines = Deadlines(30)

    async def request() -> None:
        async with deadlines.limit():
            await asyncio.sleep(30)

    task = asyncio.create_task(request())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert deadlines._running == {}
