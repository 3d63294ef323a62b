"""ServerBucket: the client's mirror of a server's token bucket, exact on integer nanoseconds."""

from hypothesis import given, settings
from hypothesis import strategies as st

from paceline.policy.server_bucket import ServerBucket
from paceline.testing._api.bucket import TokenBucket

S = 1_000_000_000


def test_nothing_known_nothing_waits():
    bucket = ServerBucket()
    assert not bucket.known
    assert bucket.wait_ns(0, 10**9) == 0
    bucket.take(0, 500)  # nothing to take from yet
    assert bucket.wait_ns(0, 1) == 0


def test_the_refill_rate_is_the_limit_per_minute_not_the_reset():
    bucket = ServerBucket()
    # 6,000 a minute = 100 a second; 500 left, 200 of them owed to requests still in flight.
    bucket.learn(0, limit=6000, remaining=500, in_flight=200)
    assert bucket.level(0) == 300
    assert bucket.wait_ns(0, 300) == 0
    assert bucket.wait_ns(0, 301) == S // 100  # one unit more: 10 ms at 100 a second
    bucket.take(0, 300)
    assert bucket.wait_ns(0, 250) == 5 * S // 2
    assert bucket.level(5 * S // 2) == 250


def test_the_level_never_refills_past_the_most_remaining_seen():
    bucket = ServerBucket()
    bucket.learn(0, limit=60_000, remaining=3000, in_flight=0)  # the bucket holds 3,000
    bucket.take(0, 3000)
    assert bucket.level(60 * S) == 3000  # a minute refills 60,000, the bucket keeps 3,000


def test_an_estimate_above_the_capacity_waits_for_a_full_bucket_not_forever():
    bucket = ServerBucket()
    bucket.learn(0, limit=6000, remaining=1000, in_flight=0)
    bucket.take(0, 1000)
    assert bucket.wait_ns(0, 5000) == 10 * S  # 1,000 at 100 a second: full in 10 s


def test_an_answer_resets_the_level_and_in_flight_estimates_are_owed():
    bucket = ServerBucket()
    bucket.learn(0, limit=6000, remaining=1000, in_flight=0)
    bucket.take(0, 900)
    # An answer at 1 s: the server has 400 left (it refunded unused tokens), 300 in flight.
    bucket.learn(S, limit=6000, remaining=400, in_flight=300)
    assert bucket.level(S) == 100
    assert bucket.wait_ns(S, 200) == S


def test_giving_back_a_take_restores_the_level():
    bucket = ServerBucket()
    bucket.learn(0, limit=6000, remaining=1000, in_flight=0)
    bucket.take(0, 700)
    bucket.give_back(0, 700)
    assert bucket.level(0) == 1000


# The mirror against a server's own bucket (the test API's): taught by the server's remaining
# count after each call, it never sends a call the server then refuses.
MIN = 60 * S


@settings(max_examples=200, deadline=None)
@given(
    limit=st.integers(60, 100_000),
    burst=st.integers(50, 5_000),
    calls=st.lists(st.tuples(st.integers(0, 5 * S), st.integers(1, 400)), max_size=60),
)
def test_a_call_the_mirror_lets_through_is_one_the_server_admits(limit, burst, calls):
    server = TokenBucket(limit, MIN, burst, now_ns=0)
    mirror = ServerBucket()
    now = 0
    mirror.learn(now, limit=limit, remaining=server.remaining(now), in_flight=0)
    for gap_ns, cost in calls:
        now += gap_ns
        if cost > burst:
            continue  # the server refuses those whatever the client does
        now += mirror.wait_ns(now, cost)
        assert server.admit(now, cost), (now, cost, mirror.level(now), server.remaining(now))
        mirror.take(now, cost)
        mirror.learn(now, limit=limit, remaining=server.remaining(now), in_flight=0)
