"""Safe retries of POSTs: a stable ``Idempotency-Key`` per item, and no blind retry of one that
may have been processed (issue 14, item 3).

The peer is the test API's ``POST /objects``: it creates an object per POST, honours
``Idempotency-Key`` (a repeated key gets the stored answer and creates nothing) and, with
``post_drop_rate``, closes a seeded share of the connections after the object was created."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from paceline import BatchItemResult, ErrorCode, Failure, RetryPolicy, current_item_key
from paceline.http import (
    HttpRequest,
    HttpTimeout,
    MaybeProcessed,
    ServerUnreachable,
    fetch_all_sync,
)
from paceline.http._face import HTTP_RETRY_ON
from paceline.http._idempotency import Idempotency, reached_server
from paceline.runners.identity import CURRENT, stable_key
from paceline.runners.settle import Job
from paceline.testing.api_server import ApiConfig, ApiServer

N = 100
DROPS = ApiConfig(post_drop_rate=0.1, base_latency_s=0.001, seed=1)
# Quick retries: the drops are answered at once, no need to wait out a real backoff.
FAST = RetryPolicy(attempts=5, base_s=0.001, cap_s=0.01, retry_on=HTTP_RETRY_ON)


def posts(url: str, n: int = N) -> list[dict[str, Any]]:
    return [
        {"url": f"{url}/objects", "method": "POST", "json": {"name": f"t{i}"}, "id": f"t{i}"}
        for i in range(n)
    ]


def keys_by_name(server: ApiServer) -> dict[str, list[str | None]]:
    seen: dict[str, list[str | None]] = defaultdict(list)
    for request in server.objects()["requests"]:
        seen[request["body"]["name"]].append(request["key"])
    return seen


# -- the policy of one failed attempt ------------------------------------------------------


READ_TIMEOUT = HttpTimeout("ReadTimeout", 30.0, "waiting for the answer from", "http://h/t")
POST = HttpRequest("http://h/t", method="POST")


def test_a_connection_never_made_is_safe_to_retry() -> None:
    refused = ServerUnreachable("http://h/t", ConnectionRefusedError("refused"))
    connect = HttpTimeout("ConnectTimeout", 5.0, "connecting to", "http://h/t")
    pool = HttpTimeout("PoolTimeout", 5.0, "waiting for a free connection to", "http://h/t")
    assert [reached_server(e) for e in (refused, connect, pool, READ_TIMEOUT)] == [
        False,
        False,
        False,
        True,
    ]
    guard = Idempotency.of(header=None)
    assert guard.checked(refused, POST, "http://h/t") is refused
    assert guard.checked(connect, POST, "http://h/t") is connect


def test_an_unkeyed_post_that_may_have_been_processed_is_refused() -> None:
    refused = Idempotency.of(header=None).checked(READ_TIMEOUT, POST, "http://h/t")
    assert isinstance(refused, MaybeProcessed)
    assert refused.__cause__ is READ_TIMEOUT
    assert refused.retryable is False
    assert str(refused).startswith(
        "POST http://h/t may have been processed; not retried without an idempotency key "
        "(ReadTimeout after 30 s waiting for the answer from http://h/t)"
    )


def test_a_keyed_post_a_get_and_retry_unsafe_keep_the_original_error() -> None:
    keyed = HttpRequest("http://h/t", method="POST", headers={"idempotency-key": "k"})
    get = HttpRequest("http://h/t")
    guard = Idempotency.of(header=None)
    assert guard.checked(READ_TIMEOUT, keyed, "http://h/t") is READ_TIMEOUT
    assert guard.checked(READ_TIMEOUT, get, "http://h/t") is READ_TIMEOUT
    unsafe = Idempotency.of(header=None, retry_unsafe=True)
    assert unsafe.checked(READ_TIMEOUT, POST, "http://h/t") is READ_TIMEOUT


def test_the_key_goes_on_the_named_methods_only_and_a_rows_own_key_wins() -> None:
    entered = CURRENT.set(Job(0, None, "t1", "batch-1"))  # as a runner does
    try:
        expected = stable_key("batch-1", "t1")
        guard = Idempotency.of(header="X-Request-Key", methods="post,delete")
        assert guard.keyed(POST).headers == {"X-Request-Key": expected}
        assert guard.keyed(HttpRequest("http://h/t", method="DELETE")).headers == {
            "X-Request-Key": expected
        }
        assert guard.keyed(HttpRequest("http://h/t", method="PATCH")).headers == {}
        own = HttpRequest("http://h/t", method="POST", headers={"x-request-key": "mine"})
        assert guard.keyed(own).headers == {"x-request-key": "mine"}
        assert Idempotency.of(header="").keyed(POST).headers == {}
    finally:
        CURRENT.reset(entered)
    assert current_item_key() is None
    assert Idempotency().keyed(POST).headers == {}  # outside a batch: no key to give


def test_a_bad_header_name_or_method_is_refused_with_the_fix() -> None:
    with pytest.raises(ValueError, match="idempotency header 'a b': a header name"):
        Idempotency.of(header="a b")
    with pytest.raises(ValueError, match="'GE T' is not an HTTP method"):
        Idempotency.of(methods=["GE T"])


# -- against a server that drops answers after processing ------------------------------------


def test_with_defaults_every_post_succeeds_and_nothing_is_created_twice() -> None:
    with ApiServer(DROPS) as server:
        results = fetch_all_sync(posts(server.url), max_concurrent=8, retry=FAST)
        stats = server.stats()["objects"]
        seen = keys_by_name(server)
    assert [r.is_success for r in results] == [True] * N
    assert stats["dropped_after_processing"] > 0
    assert stats["created"] == N
    assert stats["duplicates"] == 0
    assert stats["replays"] == stats["dropped_after_processing"]
    # Every attempt of an item carried its one key; no two items shared one.
    assert all(len(set(keys)) == 1 and keys[0] is not None for keys in seen.values())
    assert len({keys[0] for keys in seen.values()}) == N


def test_without_a_key_the_unanswered_posts_fail_unretried_with_a_clear_message() -> None:
    with ApiServer(DROPS) as server:
        results = fetch_all_sync(
            posts(server.url), max_concurrent=8, retry=FAST, idempotency_header=None
        )
        stats = server.stats()["objects"]
    failed = [r for r in results if isinstance(r, Failure)]
    assert len(failed) == stats["dropped_after_processing"] > 0
    assert {r.error_code for r in failed} == {ErrorCode.MAYBE_PROCESSED}
    assert all("not retried without an idempotency key" in r.message for r in failed)
    assert stats["requests"] == N  # none sent twice
    assert stats["created"] == N
    assert stats["duplicates"] == 0


def test_retry_unsafe_retries_them_and_the_server_creates_duplicates() -> None:
    with ApiServer(DROPS) as server:
        results = fetch_all_sync(
            posts(server.url),
            max_concurrent=8,
            retry=FAST,
            idempotency_header=None,
            retry_unsafe=True,
        )
        stats = server.stats()["objects"]
    assert all(r.is_success for r in results)
    assert stats["duplicates"] == stats["dropped_after_processing"] > 0
    assert stats["created"] == N + stats["duplicates"]


def test_a_rerun_from_the_journal_sends_the_same_keys(tmp_path: Path) -> None:
    journal = tmp_path / "posts.journal"
    with ApiServer(DROPS) as server:
        # One attempt each: the dropped ones fail, and the journal says so.
        first = fetch_all_sync(posts(server.url), max_concurrent=8, retry=1, journal=journal)
        failed = sum(r.is_failure for r in first)
        dropped_first = server.stats()["objects"]["dropped_after_processing"]
        second = fetch_all_sync(
            posts(server.url), max_concurrent=8, retry=FAST, journal=journal, retry_failed=True
        )
        stats = server.stats()["objects"]
        seen = keys_by_name(server)
    assert failed == dropped_first > 0
    assert all(r.is_success for r in second)
    assert stats["created"] == N
    assert stats["duplicates"] == 0
    resent = [keys for keys in seen.values() if len(keys) > 1]
    assert len(resent) >= failed
    assert all(len(set(keys)) == 1 for keys in seen.values())


def test_a_users_own_idempotency_key_is_sent_as_given() -> None:
    with ApiServer(ApiConfig(base_latency_s=0)) as server:
        request = {
            "url": f"{server.url}/objects",
            "method": "POST",
            "json": {"name": "own"},
            "headers": {"Idempotency-Key": "my-key-1"},
        }
        results = fetch_all_sync([request, dict(request)], max_concurrent=1)
        stats = server.stats()["objects"]
        keys = [r["key"] for r in server.objects()["requests"]]
    assert [r.value.status_code for r in results] == [201, 200]  # created, then replayed
    assert keys == ["my-key-1", "my-key-1"]
    assert stats["created"] == 1
    assert stats["replays"] == 1


def test_an_unkeyed_post_to_a_refused_connection_is_retried() -> None:
    import asyncio
    import socket

    from paceline.http import stream_requests

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def run() -> list[BatchItemResult]:
        request = {"url": f"http://127.0.0.1:{port}/objects", "method": "POST", "json": {}}
        items = stream_requests([request], retry=FAST, idempotency_header=None)
        return [item async for item in items]

    (result,) = asyncio.run(run())
    assert result.attempts == 5
    assert isinstance(result.exception, ServerUnreachable)
