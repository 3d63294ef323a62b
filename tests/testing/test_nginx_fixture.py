"""The nginx fixture itself: its limits do what nginx documents, on loopback."""

from __future__ import annotations

import os
import threading

import pytest

from paceline.testing.nginx import NginxLimits, NginxServer, nginx_program

pytestmark = pytest.mark.timeout(60)

needs_nginx = pytest.mark.skipif(
    nginx_program() is None and "CI" not in os.environ,
    reason="nginx is not installed (with CI set, this fails instead)",
)


def at_once(count: int, server: NginxServer) -> list[int]:
    """``count`` GETs released together from as many threads; their statuses, sorted."""
    barrier = threading.Barrier(count)
    statuses: list[int] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        barrier.wait(10)
        status = server.get(f"/items/{i}")
        with lock:
            statuses.append(status)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    return sorted(statuses)


@needs_nginx
def test_limit_conn_serves_that_many_behind_a_slow_upstream_and_answers_503_beyond():
    # Each request holds a connection for 1 s: all 12 arrive while the first 8 are served.
    limits = NginxLimits(connections=8, upstream_latency_s=1.0)
    with NginxServer(limits) as server:
        statuses = at_once(12, server)
        upstream = server.upstream_stats()
        log = server.log(at_least=12)
    assert statuses == [200] * 8 + [503] * 4
    assert (upstream["accepted"], upstream["max_in_flight"]) == (8, 8)
    assert sorted(status for _, status, _ in log) == statuses


def test_an_upstream_and_a_test_api_upstream_cannot_both_be_given():
    with pytest.raises(ValueError, match="not both"):
        NginxLimits(upstream="http://127.0.0.1:1", upstream_latency_s=0.05)
