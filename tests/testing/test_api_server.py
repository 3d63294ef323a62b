"""The test API against real sockets on loopback: quota, headers, capacity, latency under load,
injected failures, keep-alive, routes, malformed input and the child-process mode.

The client is the standard library (http.client and raw sockets). No fine wall-clock timing is
asserted: latency is checked through the ``Server-Timing`` the server reports for its choice.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import re
import socket
import threading
import time
import urllib.parse
from typing import Any

import pytest

from paceline.testing._api.state import ServerState
from paceline.testing.api_server import ApiConfig, ApiServer, _parser, config_from_args

pytestmark = pytest.mark.timeout(30)

TIMEOUT_S = 5.0  # only reached when the server is broken


def connect(url: str) -> http.client.HTTPConnection:
    parts = urllib.parse.urlsplit(url)
    assert parts.hostname is not None
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=TIMEOUT_S)


def call(
    conn: http.client.HTTPConnection,
    path: str,
    method: str = "GET",
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, http.client.HTTPMessage, Any]:
    """One request on ``conn``: (status, headers, decoded JSON body)."""
    data = None if body is None else json.dumps(body).encode()
    sent = {"Content-Type": "application/json"} if data is not None else {}
    conn.request(method, path, body=data, headers={**sent, **(headers or {})})
    response = conn.getresponse()
    payload = response.read()
    return response.status, response.headers, json.loads(payload) if payload else None


def fetch(url: str, path: str, method: str = "GET", body: Any = None) -> tuple[int, Any, Any]:
    conn = connect(url)
    try:
        return call(conn, path, method, body)
    finally:
        conn.close()


def raw_exchange(url: str, data: bytes) -> bytes:
    """Send bytes on a fresh socket and read until the server closes it."""
    parts = urllib.parse.urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    with socket.create_connection((parts.hostname, parts.port), timeout=TIMEOUT_S) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def server_timing_ms(headers: http.client.HTTPMessage) -> float:
    match = re.fullmatch(r"app;dur=([0-9.]+)", headers["Server-Timing"])
    assert match is not None, headers["Server-Timing"]
    return float(match[1])


def concurrently(count: int, work: Any) -> list[Any]:
    """Run ``work(i)`` in ``count`` threads released together; return results in order."""
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count

    def run(i: int) -> None:
        barrier.wait(TIMEOUT_S)
        results[i] = work(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT_S * 2)
    assert not any(thread.is_alive() for thread in threads)
    return results


# -- quota ---------------------------------------------------------------------------------------


def test_quota_admits_exactly_n_per_window_and_answers_the_rest_429_with_retry_after():
    config = ApiConfig(quota=10, window_s=0.5, retry_after=True, base_latency_s=0)
    with ApiServer(config) as server:
        conn = connect(server.url)
        started = time.monotonic()
        answers = [call(conn, f"/items/{i}") for i in range(30)]
        burst_s = time.monotonic() - started
        statuses = [status for status, _, _ in answers]
        assert statuses[:10] == [200] * 10
        if burst_s < config.window_s:  # always, unless the machine stalled for half a second
            assert statuses[10:] == [429] * 20
            assert all(headers["Retry-After"] == "1" for _, headers, _ in answers[10:])
        time.sleep(config.window_s)
        later = [call(conn, f"/items/later-{i}")[0] for i in range(12)]
        assert later.count(200) >= 10
        conn.close()
        stats = server.stats()
    assert stats["max_accepted_in_any_window"] == 10
    assert stats["requests"] == 42
    assert stats["accepted"] + stats["throttled_429"] == 42


def test_retry_after_is_left_out_unless_asked_for():
    with ApiServer(ApiConfig(quota=1, window_s=60, base_latency_s=0)) as server:
        assert fetch(server.url, "/items/a")[0] == 200
        status, headers, body = fetch(server.url, "/items/b")
    assert (status, headers["Retry-After"], body) == (429, None, {"error": "rate limited"})


def test_retry_after_counts_whole_seconds_until_the_oldest_slot_frees():
    with ApiServer(ApiConfig(quota=2, window_s=30, retry_after=True, base_latency_s=0)) as server:
        fetch(server.url, "/items/a")
        fetch(server.url, "/items/b")
        _, headers, _ = fetch(server.url, "/items/c")
    assert 29 <= int(headers["Retry-After"]) <= 30


def test_bucket_admits_its_burst_at_once_then_one_per_refill_interval():
    # 10 per second: a token every 100 ms; a burst of 3 is served, the rest refused until then.
    config = ApiConfig(
        quota=10, limiter="bucket", burst=3, retry_after=True, headers="x", base_latency_s=0
    )
    with ApiServer(config) as server:
        conn = connect(server.url)
        started = time.monotonic()
        answers = [call(conn, f"/items/{i}") for i in range(6)]
        burst_s = time.monotonic() - started
        statuses = [status for status, _, _ in answers]
        assert statuses[:3] == [200] * 3
        if burst_s < 0.1:  # always, unless the machine stalled for 100 ms
            assert statuses[3:] == [429] * 3
            assert all(headers["Retry-After"] == "1" for _, headers, _ in answers[3:])
            assert [h["X-RateLimit-Remaining"] for _, h, _ in answers] == ["2", "1", "0", "0"] + [
                "0"
            ] * 2
        assert all(headers["X-RateLimit-Limit"] == "3" for _, headers, _ in answers)
        time.sleep(0.25)  # two tokens back, not three
        later = [call(conn, f"/items/later-{i}")[0] for i in range(3)]
        conn.close()
        stats = server.stats()
    assert later[:2] == [200, 200]
    assert stats["accepted"] + stats["throttled_429"] == stats["requests"] == 9
    assert (stats["limiter"], stats["burst"]) == ("bucket", 3)


def test_bucket_describes_itself_as_burst_per_fill_time_in_ietf_headers():
    config = ApiConfig(quota=20, window_s=2.0, limiter="bucket", burst=5, headers="ietf")
    with ApiServer(config) as server:
        _, headers, _ = fetch(server.url, "/items/a")
    # 10 per second: 5 tokens fill in 0.5 s; one taken, full again 0.1 s later (rounded up)
    assert sf_params(headers["RateLimit-Policy"]) == {"q": "5", "w": "0.5"}
    assert sf_params(headers["RateLimit"]) == {"r": "4", "t": "1"}


def test_bucket_retry_after_counts_whole_seconds_until_a_token_is_back():
    config = ApiConfig(
        quota=1, window_s=30, limiter="bucket", burst=1, retry_after=True, base_latency_s=0
    )
    with ApiServer(config) as server:
        fetch(server.url, "/items/a")
        status, headers, _ = fetch(server.url, "/items/b")
    assert status == 429
    assert 29 <= int(headers["Retry-After"]) <= 30


def test_bucket_without_burst_holds_the_quota():
    config = ApiConfig(quota=4, window_s=60, limiter="bucket", base_latency_s=0)
    with ApiServer(config) as server:
        statuses = [fetch(server.url, f"/items/{i}")[0] for i in range(5)]
    assert statuses == [200] * 4 + [429]


# -- quota headers -------------------------------------------------------------------------------

SF_ITEM = re.compile(r'"default";(?P<params>.*)')


def sf_params(value: str) -> dict[str, str]:
    match = SF_ITEM.fullmatch(value)
    assert match is not None, value
    return dict(part.split("=", 1) for part in match["params"].split(";"))


def test_ietf_headers_give_policy_remaining_and_reset():
    config = ApiConfig(quota=3, window_s=20, headers="ietf", base_latency_s=0)
    with ApiServer(config) as server:
        conn = connect(server.url)
        answers = [call(conn, f"/items/{i}") for i in range(4)]
        conn.close()
    for _, headers, _ in answers:
        assert sf_params(headers["RateLimit-Policy"]) == {"q": "3", "w": "20"}
    remaining = [int(sf_params(h["RateLimit"])["r"]) for _, h, _ in answers]
    resets = [int(sf_params(h["RateLimit"])["t"]) for _, h, _ in answers]
    assert [status for status, _, _ in answers] == [200, 200, 200, 429]
    assert remaining == [2, 1, 0, 0]
    assert all(19 <= t <= 20 for t in resets)


def test_ietf_policy_writes_a_subsecond_window_as_a_decimal():
    config = ApiConfig(quota=3, window_s=0.25, headers="ietf", base_latency_s=0)
    with ApiServer(config) as server:
        _, headers, _ = fetch(server.url, "/items/a")
    assert sf_params(headers["RateLimit-Policy"]) == {"q": "3", "w": "0.25"}
    assert sf_params(headers["RateLimit"])["t"] == "1"


@pytest.mark.parametrize(
    ("reset_format", "low", "high"),
    [("delta", 19, 20), ("delta_ms", 19_000, 20_000), ("epoch", 18, 22)],
)
def test_x_headers_give_limit_remaining_and_reset_in_the_chosen_format(reset_format, low, high):
    config = ApiConfig(
        quota=2, window_s=20, headers="x", reset_format=reset_format, base_latency_s=0
    )
    with ApiServer(config) as server:
        conn = connect(server.url)
        answers = [call(conn, f"/items/{i}") for i in range(3)]
        conn.close()
    now = time.time()
    for _, headers, _ in answers:
        assert headers["X-RateLimit-Limit"] == "2"
        reset = int(headers["X-RateLimit-Reset"])
        if reset_format == "epoch":
            reset = round(reset - now)
        assert low <= reset <= high
    assert [h["X-RateLimit-Remaining"] for _, h, _ in answers] == ["1", "0", "0"]
    assert answers[2][0] == 429


def test_no_quota_headers_by_default():
    with ApiServer(ApiConfig(quota=5, base_latency_s=0)) as server:
        _, headers, _ = fetch(server.url, "/items/a")
    assert not [name for name in headers if "ratelimit" in name.lower()]


# -- capacity and latency ------------------------------------------------------------------------


def test_capacity_answers_503_beyond_it_and_never_serves_more_at_once():
    config = ApiConfig(capacity=4, base_latency_s=0.5, load_factor=0)
    with ApiServer(config) as server:
        statuses = concurrently(12, lambda i: fetch(server.url, f"/items/{i}")[0])
        stats = server.stats()
    assert set(statuses) <= {200, 503}
    assert statuses.count(200) >= 1
    assert statuses.count(503) >= 1
    assert stats["max_in_flight"] <= 4
    assert stats["overloaded_503"] == statuses.count(503)
    assert stats["accepted"] == statuses.count(200)


def test_latency_formula_grows_linearly_above_the_knee():
    config = ApiConfig(capacity=10, base_latency_s=0.01, load_factor=3.0)
    assert config.effective_knee == 5
    assert [config.latency_s(n) for n in (1, 5)] == [0.01, 0.01]
    assert config.latency_s(10) == pytest.approx(0.01 * (1 + 3.0 * 5 / 5))
    assert ApiConfig(capacity=1).effective_knee == 1
    assert ApiConfig().effective_knee is None
    assert ApiConfig(knee=2, load_factor=1.0, base_latency_s=1).latency_s(6) == 3.0


def test_latency_chosen_by_the_server_grows_with_the_requests_in_flight():
    # knee 1 and factor 1: a request arriving with k in flight (itself included) takes k * base.
    config = ApiConfig(base_latency_s=0.2, knee=1, load_factor=1.0)
    with ApiServer(config) as server:
        answers = concurrently(6, lambda i: fetch(server.url, f"/items/{i}"))
    durations_ms = sorted(server_timing_ms(headers) for _, headers, _ in answers)
    multiples = [d / 200 for d in durations_ms]
    assert all(m == pytest.approx(round(m)) for m in multiples)
    assert multiples[0] == pytest.approx(1)  # the first arrival had the server to itself
    assert multiples[-1] >= 2  # six requests released together overlap


# -- injected failures ---------------------------------------------------------------------------


def run_sequentially(url: str, count: int) -> list[int | str]:
    """``count`` requests one after another; a dropped one is recorded as ``"drop"``."""
    outcomes: list[int | str] = []
    conn = connect(url)
    for i in range(count):
        try:
            outcomes.append(call(conn, f"/items/{i}")[0])
        except (http.client.RemoteDisconnected, ConnectionResetError):
            outcomes.append("drop")
            conn.close()
            conn = connect(url)
    conn.close()
    return outcomes


def test_injected_errors_and_drops_match_their_rates_and_the_seed():
    config = ApiConfig(error_rate=0.1, drop_rate=0.05, seed=7, base_latency_s=0)
    with ApiServer(config) as server:
        outcomes = run_sequentially(server.url, 400)
        stats = server.stats()
        server.reset()
        again = run_sequentially(server.url, 100)
    errors, drops = outcomes.count(500), outcomes.count("drop")
    assert 20 <= errors <= 60  # expected 38 = 400 * 0.95 * 0.1
    assert 8 <= drops <= 35  # expected 20
    assert outcomes.count(200) == 400 - errors - drops
    assert (stats["errors_500"], stats["dropped"], stats["accepted"]) == (
        errors,
        drops,
        400 - errors - drops,
    )
    assert again == outcomes[:100]  # same seed, same run


def test_slow_answers_take_slow_s_longer():
    with ApiServer(ApiConfig(slow_rate=1.0, slow_s=0.05, base_latency_s=0)) as server:
        _, headers, _ = fetch(server.url, "/items/a")
    assert server_timing_ms(headers) == pytest.approx(50)


def test_network_delay_holds_each_request_before_the_quota_counts_it():
    config = ApiConfig(quota=100, network_delay_s=0.2, base_latency_s=0, seed=3)
    with ApiServer(config) as server:
        statuses = concurrently(20, lambda _: fetch(server.url, "/items/a")[0])
        stats = server.stats(times=True)
    assert statuses == [200] * 20
    # the requests were sent at once; their arrivals, as the quota counted them, spread out
    arrivals = sorted(stats["accepted_times_s"])
    assert arrivals[-1] - arrivals[0] > 0.05
    draws = [ServerState(config).network_delay_s() for _ in range(2)]
    assert draws[0] == draws[1]  # seeded: the same run every time
    assert ServerState(ApiConfig()).network_delay_s() == 0.0


# -- connections and routes ----------------------------------------------------------------------


def test_keep_alive_serves_several_requests_on_one_connection():
    with ApiServer(ApiConfig(base_latency_s=0)) as server:
        conn = connect(server.url)
        bodies = []
        for _ in range(5):
            bodies.append(call(conn, "/items/same")[2])
            sock = conn.sock
            assert sock is not None
            if len(bodies) == 1:
                first_sock = sock
            assert sock is first_sock
        conn.close()
        stats = server.stats()
    assert [body["n"] for body in bodies] == [1, 2, 3, 4, 5]
    assert stats["items_served_more_than_once"] == 1


def test_connection_close_is_honoured():
    with ApiServer(ApiConfig(base_latency_s=0)) as server:
        reply = raw_exchange(
            server.url,
            b"GET /items/a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            b"GET /items/b HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        http10 = raw_exchange(server.url, b"GET /items/c HTTP/1.0\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Connection: close\r\n" in reply
    assert reply.count(b"HTTP/1.1") == 1  # the second request was never read
    assert http10.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b'"id":"c"' in http10


def test_post_item_echoes_the_json_body():
    with ApiServer(ApiConfig(base_latency_s=0)) as server:
        status, _, body = fetch(server.url, "/items/42", "POST", {"x": [1, 2]})
        bad = raw_exchange(
            server.url,
            b"POST /items/1 HTTP/1.1\r\nContent-Length: 3\r\nConnection: close\r\n\r\n{x}",
        )
    assert (status, body) == (200, {"id": "42", "n": 1, "echo": {"x": [1, 2]}})
    assert bad.startswith(b"HTTP/1.1 400 ")


def test_bulk_counts_once_against_the_quota_and_leaves_out_missing_ids():
    with ApiServer(ApiConfig(quota=1, window_s=60, base_latency_s=0)) as server:
        ids = ["a", "missing-1", "b", "missing"]
        status, _, body = fetch(server.url, "/bulk", "POST", {"ids": ids})
        second = fetch(server.url, "/bulk", "POST", {"ids": ["a"]})[0]
        stats = server.stats()
    assert status == 200
    assert body == {"items": {"a": {"id": "a", "n": 1}, "b": {"id": "b", "n": 1}}}
    assert second == 429
    assert (stats["requests"], stats["accepted"], stats["throttled_429"]) == (2, 1, 1)


def test_bulk_without_a_list_of_ids_is_a_bad_request():
    with ApiServer(ApiConfig(base_latency_s=0)) as server:
        status, _, body = fetch(server.url, "/bulk", "POST", {"ids": "a"})
        wrong_method = fetch(server.url, "/bulk")[0]
    assert status == 400
    assert "ids" in body["error"]
    assert wrong_method == 405


def test_stats_and_reset_are_not_counted_against_the_quota():
    with ApiServer(ApiConfig(quota=1, window_s=60, base_latency_s=0)) as server:
        conn = connect(server.url)
        for _ in range(5):
            assert call(conn, "/stats")[0] == 200
        assert call(conn, "/items/a")[0] == 200
        assert call(conn, "/items/b")[0] == 429
        stats = call(conn, "/stats?times=1")[2]
        assert call(conn, "/reset", "POST")[0] == 200
        after_reset = call(conn, "/stats")[2]
        assert call(conn, "/items/c")[0] == 200  # the reset forgot the quota log too
        conn.close()
    assert (stats["requests"], stats["accepted"], stats["throttled_429"]) == (2, 1, 1)
    assert len(stats["accepted_times_s"]) == 1
    assert stats["accepted_times_s"][0] >= 0
    assert stats["latency_p50_s"] is not None
    assert (after_reset["requests"], after_reset["accepted"]) == (0, 0)
    assert "accepted_times_s" not in after_reset


def test_unknown_routes_answer_404_and_are_not_counted():
    with ApiServer(ApiConfig(base_latency_s=0)) as server:
        statuses = [fetch(server.url, path)[0] for path in ("/nope", "/items/", "/items")]
        wrong_method = fetch(server.url, "/items/a", "DELETE")[0]
        stats = server.stats()
    assert statuses == [404, 404, 404]
    assert wrong_method == 405
    assert stats["requests"] == 0


def test_every_response_has_an_imf_fixdate_date_header():
    config = ApiConfig(quota=1, window_s=60, base_latency_s=0)
    with ApiServer(config) as server:
        answers = [fetch(server.url, path) for path in ("/items/a", "/items/b", "/nope", "/stats")]
        malformed = raw_exchange(server.url, b"NONSENSE\r\n\r\n")
    dates = [headers["Date"] for _, headers, _ in answers]
    dates.append(re.search(rb"\r\nDate: ([^\r]+)\r\n", malformed)[1].decode())  # type: ignore[index]
    for date in dates:
        assert re.fullmatch(r"[A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d GMT", date)
        assert abs(email.utils.parsedate_to_datetime(date).timestamp() - time.time()) < 5


@pytest.mark.parametrize(
    "data",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /items/a HTTP/9.9\r\n\r\n",
        b"GET /items/a HTTP/1.1\r\nno colon here\r\n\r\n",
        b"POST /items/a HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
        b"GET  /items/a HTTP/1.1\r\n\r\n",
    ],
)
def test_malformed_requests_get_400_and_the_server_keeps_serving(data):
    with ApiServer(ApiConfig(base_latency_s=0)) as server:
        reply = raw_exchange(server.url, data)
        status = fetch(server.url, "/items/a")[0]
        stats = server.stats()
    assert reply.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert status == 200
    assert (stats["malformed"], stats["requests"]) == (1, 1)


def test_chunked_bodies_are_refused_not_misread():
    with ApiServer(ApiConfig(base_latency_s=0)) as server:
        reply = raw_exchange(
            server.url, b"POST /items/a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        )
    assert reply.startswith(b"HTTP/1.1 501 ")


def test_closing_the_server_ends_idle_and_busy_connections_promptly():
    server = ApiServer(ApiConfig(base_latency_s=30)).start()
    idle = connect(server.url)
    call(idle, "/stats")
    busy = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT_S)
    busy.sendall(b"GET /items/slow HTTP/1.1\r\n\r\n")
    time.sleep(0.05)
    started = time.monotonic()
    server.close()
    assert time.monotonic() - started < 2
    assert busy.recv(100) == b""
    busy.close()
    idle.close()
    with pytest.raises(RuntimeError, match="not running"):
        server.stats()


# -- config and the child process ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"quota": 0}, "quota 0"),
        ({"window_s": 0}, "window_s 0"),
        ({"error_rate": 1.5}, "error_rate 1.5"),
        ({"headers": "draft"}, "headers 'draft'"),
        ({"capacity": -1}, "capacity -1"),
        ({"network_delay_s": -0.1}, "network_delay_s -0.1"),
        ({"limiter": "leaky"}, "limiter 'leaky': must be one of window, bucket"),
        ({"limiter": "bucket"}, "limiter 'bucket' needs a quota"),
        ({"quota": 5, "burst": 3}, "burst 3: only a token bucket has one; add limiter='bucket'"),
        ({"quota": 5, "limiter": "bucket", "burst": 0}, "burst 0"),
    ],
)
def test_config_errors_name_the_value_and_the_fix(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        ApiConfig(**kwargs)


@pytest.mark.parametrize(
    "config",
    [
        ApiConfig(),
        ApiConfig(quota=10, window_s=0.5, retry_after=True, headers="x", reset_format="epoch"),
        ApiConfig(quota=5, headers="ietf", network_delay_s=0.05),
        ApiConfig(capacity=16, knee=3, load_factor=2.5, base_latency_s=0.001, seed=9),
        ApiConfig(error_rate=0.1, slow_rate=0.2, slow_s=0.3, drop_rate=0.05, headers="ietf"),
        ApiConfig(quota=50, limiter="bucket", burst=10, retry_after=True),
        ApiConfig(quota=7, window_s=2.0, limiter="bucket", headers="x"),
    ],
)
def test_command_line_arguments_round_trip_the_config(config):
    assert config_from_args(_parser().parse_args(config.to_argv())) == config


def test_spawned_server_serves_and_terminates_without_an_orphan():
    config = ApiConfig(quota=2, window_s=60, retry_after=True, base_latency_s=0)
    with ApiServer.spawn(config) as spawned:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", spawned.url)
        statuses = [fetch(spawned.url, f"/items/{i}")[0] for i in range(3)]
        stats = spawned.stats(times=True)
        url, process = spawned.url, spawned.process
        assert process is not None
        assert process.poll() is None
    assert process.poll() is not None  # terminated and reaped
    assert statuses == [200, 200, 429]
    assert (stats["accepted"], len(stats["accepted_times_s"])) == (2, 2)
    with pytest.raises(ConnectionRefusedError):
        fetch(url, "/stats")
    with pytest.raises(RuntimeError, match="not running"):
        spawned.url  # noqa: B018


def test_spawn_reports_a_child_that_cannot_start():
    spawned = ApiServer.spawn(ApiConfig())
    spawned.argv[-1] = "not-a-port"
    with pytest.raises(RuntimeError, match="did not say 'listening on '"):
        spawned.start()
    assert spawned.process is not None
    assert spawned.process.poll() is not None
