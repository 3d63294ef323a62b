"""The adaptive gate on a real event loop."""

import asyncio

from paceline import Throttled, batch_execute
from paceline.policy.adaptive import AdaptiveController, AdaptiveSettings, Outcome
from paceline.runners.adaptive_gate import AdaptiveGate, default_classify


class Status(Exception):
    def __init__(self, status_code):
        super().__init__(f"HTTP {status_code}")
        self.status_code = status_code


def test_the_default_classifier_reads_throttles_statuses_and_transport_errors():
    assert default_classify(1, None) is Outcome.SUCCESS
    assert default_classify(None, Throttled()) is Outcome.THROTTLE
    assert default_classify(None, Status(429)) is Outcome.THROTTLE
    assert default_classify(None, Status(503)) is Outcome.OVERLOAD
    assert default_classify(None, Status(502)) is Outcome.CAPACITY
    assert default_classify(None, Status(504)) is Outcome.CAPACITY
    assert default_classify(None, Status(500)) is Outcome.IGNORE  # the app's error, not load
    assert default_classify(None, TimeoutError()) is Outcome.CAPACITY
    assert default_classify(None, Status(404)) is Outcome.IGNORE
    assert default_classify(None, ValueError()) is Outcome.IGNORE


def test_the_concurrency_gate_holds_in_flight_at_the_limit():
    in_flight = 0
    most = 0

    async def op(i):
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.005)
        in_flight -= 1
        return i

    settings = AdaptiveSettings(initial_concurrency=3, max_concurrency=3)
    results = asyncio.run(batch_execute(range(40), op, None, adaptive=settings))
    assert [r.value for r in results] == list(range(40))
    assert most <= 3


def test_an_abandoned_probe_does_not_leave_the_controller_waiting_for_it():
    controller = AdaptiveController(AdaptiveSettings(initial_concurrency=2))
    controller._probing = True
    gate = AdaptiveGate(controller)

    async def main():
        ticket = await gate.enter()
        assert ticket.probe
        gate.abandon(ticket)

    asyncio.run(main())
    assert gate.in_flight == 0
    assert not controller._probe_in_flight


def test_a_cancelled_batch_leaves_no_slot_taken():
    controller = AdaptiveController(AdaptiveSettings(initial_concurrency=4))

    async def op(i):
        await asyncio.sleep(10)

    async def main():
        task = asyncio.ensure_future(batch_execute(range(20), op, None, adaptive=controller))
        await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return task.cancelled()

    assert asyncio.run(main())
    assert not controller._probe_in_flight
    # not stuck waiting for a slot: with nothing in flight the gate would let an attempt go
    assert not controller.decide(0, in_flight=0).slot
