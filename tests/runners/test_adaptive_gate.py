"""The adaptive gate on a real event loop."""

import asyncio

from paceline import Throttled, batch_execute
from paceline.policy.adaptive import AdaptiveController, AdaptiveSettings, Outcome
from paceline.runners import adaptive_gate
from paceline.runners.adaptive_gate import PRECISE_NS, AdaptiveGate, default_classify


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


class FakeTime:
    """The gate's clock, moved only by its sleeps (each lands ``late_ns`` after its end)."""

    def __init__(self, monkeypatch, late_ns):
        self.now_ns = 0
        self.late_ns = late_ns
        self.sleeps_ns = []
        real_sleep = asyncio.sleep

        async def sleep(delay_s, result=None):
            self.sleeps_ns.append(round(delay_s * 1e9))
            value = await real_sleep(0, result)
            self.now_ns += round(delay_s * 1e9) + self.late_ns
            return value

        monkeypatch.setattr(adaptive_gate.asyncio, "sleep", sleep)

    def clock_ns(self):
        return self.now_ns


def test_a_strictly_paced_start_sleeps_to_just_before_its_slot_then_yields_until_it(
    monkeypatch,
):
    # epoll sleeps whole milliseconds, rounded up: 0-1 ms late, and a leaky bucket (nginx
    # limit_req) refuses a start that comes early after one that came late
    controller = AdaptiveController(AdaptiveSettings(initial_rate_per_s=50.0))
    controller._strict_pacing = True
    time = FakeTime(monkeypatch, late_ns=100_000)
    gate = AdaptiveGate(controller, clock_ns=time.clock_ns)

    async def main():
        first = await gate.enter()
        gate.exit(first, 1, None)
        return await gate.enter()

    second = asyncio.run(main())
    slot_ns = 20_000_000
    assert time.sleeps_ns[0] == slot_ns - PRECISE_NS  # woke 0.1 ms later: 1.4 ms to go
    assert time.sleeps_ns[1:] == [0] * 14
    assert second.sent_ns == slot_ns  # the first reading at or after the slot


def test_a_start_paced_loosely_sleeps_the_whole_wait(monkeypatch):
    controller = AdaptiveController(AdaptiveSettings(initial_rate_per_s=50.0))
    time = FakeTime(monkeypatch, late_ns=100_000)
    gate = AdaptiveGate(controller, clock_ns=time.clock_ns)

    async def main():
        await gate.enter()
        return await gate.enter()

    asyncio.run(main())
    assert time.sleeps_ns == [20_000_000]


def test_workers_wait_for_the_pacer_one_at_a_time_in_order(monkeypatch):
    # All sleeping until the same slot woke together; the one that went was whichever the
    # loop ran first, after the wake-ups of the others.
    controller = AdaptiveController(AdaptiveSettings(initial_rate_per_s=50.0))
    time = FakeTime(monkeypatch, late_ns=0)
    gate = AdaptiveGate(controller, clock_ns=time.clock_ns)
    order = []

    async def worker(n):
        ticket = await gate.enter()
        order.append((n, ticket.sent_ns))

    async def main():
        await asyncio.gather(*(worker(n) for n in range(5)))

    asyncio.run(main())
    assert order == [(n, n * 20_000_000) for n in range(5)]
    assert time.sleeps_ns == [20_000_000] * 4  # one sleep per slot, no herd


def test_a_worker_cancelled_while_waiting_for_the_pacer_passes_its_turn_on():
    controller = AdaptiveController(AdaptiveSettings(initial_rate_per_s=20.0))
    gate = AdaptiveGate(controller)

    async def main():
        await gate.enter()
        waiting = asyncio.ensure_future(gate.enter())  # holds the turn, sleeping 50 ms
        await asyncio.sleep(0.01)
        queued = asyncio.ensure_future(gate.enter())
        await asyncio.sleep(0.01)
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        return await asyncio.wait_for(queued, 5)

    ticket = asyncio.run(main())
    assert ticket.rate_binding
    assert gate.in_flight == 2
