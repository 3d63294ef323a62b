"""A shared limit on one Redis: paceline's store vs ``limits`` and pyrate-limiter, side by side.

Issue 15's targets: processes sharing one ``200/s`` key, the test API as the referee (a strict
sliding log of 200 per 1 s: it answers 429 beyond it and reports the most accepted in any 1 s
window). Per library and scenario: the most arrivals in any 1 s window, the 429s, the fraction
of the rate achieved, and the Redis round trips per grant (counted by a proxy of ours in front
of Redis: client-to-Redis chunks, i.e. requests, with or without added latency; and Redis's own
count of the commands clients sent, by command, from ``INFO commandstats``).

- ``direct``: 4 processes x 16 threads, 1,000 calls in all (``--calls``);
- ``latency``: the same through the proxy adding 1 ms + up to 4 ms each way;
- ``restart``: Redis killed and restarted inside a window (paceline only: the others raise);
- ``fairness``: 8 processes x 64 waiting threads, each process's share of the grants.

``limits`` (moving window) is try-only: its callers poll every 10 ms; pyrate-limiter blocks
(its own sleep and retry). Both read the client's clock; paceline reads Redis TIME. Every
thread keeps one HTTP connection alive (``http.client``), so a start is one send away from its
arrival for every library alike.

    .venv/bin/python benchmarks/redis_store.py [--calls 1000] [--only paceline,limits,pyrate]

``--only`` also takes ``paceline@/other/tree/src`` (another tree's paceline, e.g. the last
release's, measured in the same run) and ``paceline+m5`` (``margin_s`` = 5 ms: what covers the
spread between a start and its arrival). The table's "window share" is the steady share of the
rate (see ``_window_share``); "fraction of rate" is the older figure from the (N+1)-th arrival
to the last, kept for comparison. ``BENCH_DIAG=1`` prints each paceline process's round trips,
lateness and margin; ``BENCH_DIAG=trace`` also records every paceline start (its slot and its
entry's stamp on Redis's clock, the limiter's check, the start, the booking's round trip) and
every give-back, and explains each 1 s window with more than 200 starts (``_explain_excess``).
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

RATE = 200


def worker(lib: str, url: str, key: str, api: str, calls: int, threads: int) -> None:
    """One process: ``threads`` threads taking ``calls`` grants in all, each followed by a GET."""
    flags: list[str] = []
    if lib.startswith("paceline"):
        if "@" in lib:  # another tree's paceline ("paceline@/work/main/src"): old and new
            sys.path.insert(0, lib.split("@", 1)[1])
        from paceline import RateLimiter

        # "paceline+m5": margin_s = 5 ms (the user's cover for start -> arrival jitter);
        # "paceline+async": one event loop per process, ``threads`` tasks on it
        flags = lib.split("@", 1)[0].split("+")[1:]
        plus = [f[1:] for f in flags if f.startswith("m")]
        margin_s = float(plus[0]) / 1000 if plus else None
        limiter = RateLimiter.from_rates(f"{RATE}/s", store=url, key=key, margin_s=margin_s)
        acquire: Any = limiter.acquire
    elif lib == "limits":
        from limits import RateLimitItemPerSecond
        from limits.storage import RedisStorage
        from limits.strategies import MovingWindowRateLimiter

        item = RateLimitItemPerSecond(RATE)
        moving = MovingWindowRateLimiter(RedisStorage(url))

        def acquire() -> None:
            while not moving.hit(item, key):
                time.sleep(0.01)  # try-only: poll

    else:
        import redis
        from pyrate_limiter import Duration, Limiter, Rate, RedisBucket

        bucket = RedisBucket.init([Rate(RATE, Duration.SECOND)], redis.Redis.from_url(url), key)
        pyrate = Limiter(bucket)

        def acquire() -> None:
            pyrate.try_acquire(key, blocking=True)

    counts: dict[str, Any] = {"ok": 0, "throttled": 0, "other": 0}
    gaps: list[int] = []
    # BENCH_DIAG=trace: per start [start, check, slot_lo, slot_hi (local ns), server slot,
    # server stamp (ticks), margin, sent, recv, wait, thread, ids...]; per give-back [when,
    # server slot, sent, ids...]
    tracing = os.environ.get("BENCH_DIAG") == "trace" and lib.startswith("paceline")
    trace: list[list[int]] = []
    given_back: list[list[int]] = []
    bookings: list[list[int]] = []
    if tracing:
        _trace_give_backs(limiter, given_back, bookings)
    starts: list[float] = []  # CLOCK_MONOTONIC is one clock for every process of a machine
    lock = threading.Lock()
    left = iter(range(calls))
    where = urlsplit(api)

    def run() -> None:
        # One kept-alive connection per thread, as any real client pools them: a start is then
        # one send away from its arrival (a new connection per call adds a connect, under the
        # GIL, between the two, for every library alike).
        conn = http.client.HTTPConnection(where.hostname or "127.0.0.1", where.port, timeout=30)
        for i in left:
            granted = acquire()
            start_ns = time.monotonic_ns()
            starts.append(start_ns / 1e9)
            if isinstance(granted, int):
                gaps.append(start_ns - granted)
            try:
                conn.request("GET", f"/items/{key}-{os.getpid()}-{i}")
                answer = conn.getresponse()
                answer.read()
                code = answer.status
                outcome = "ok" if code < 400 else "throttled" if code == 429 else "other"
            except OSError:
                outcome = "other"
                conn.close()
            with lock:
                counts[outcome] += 1
            if tracing:  # after the call: nothing between the start and its send
                trace.append(_trace_row(limiter, granted, start_ns))
        conn.close()

    async def run_async() -> None:
        # The same on one event loop: a kept-alive connection per task, HTTP/1.1 by hand.
        reader, writer = await asyncio.open_connection(where.hostname, where.port)
        for i in left:
            granted = await limiter.acquire_async()
            start_ns = time.monotonic_ns()
            starts.append(start_ns / 1e9)
            gaps.append(start_ns - granted)
            path = f"/items/{key}-{os.getpid()}-{i}"
            writer.write(f"GET {path} HTTP/1.1\r\nHost: api\r\n\r\n".encode())
            status = int((await reader.readline()).split()[1])
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            await reader.readexactly(length)
            counts["ok" if status < 400 else "throttled" if status == 429 else "other"] += 1
            if tracing:
                trace.append(_trace_row(limiter, granted, start_ns))
        writer.close()

    if lib.startswith("paceline") and "async" in flags:

        async def tasks() -> None:
            await asyncio.gather(*(run_async() for _ in range(threads)))

        asyncio.run(tasks())
    else:
        pool = [threading.Thread(target=run) for _ in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
    counts["starts"] = starts
    if tracing:
        counts["trace"], counts["given_back"] = trace, given_back
        counts["bookings"] = bookings
    if lib.startswith("paceline"):
        store = limiter.store
        counts["script_calls"] = store.round_trips if store is not None else 0
        if store is not None and os.environ.get("BENCH_DIAG"):
            # p50/p90/p99/max in ms: round trips, lateness past the slot, grant to start
            counts["rtt_ms"] = _quantiles_ms(getattr(store, "_rtts", []))
            counts["late_ms"] = _quantiles_ms(getattr(store, "_lates", []))
            counts["grant_to_start_ms"] = _quantiles_ms(gaps)
            counts["margin_ms"] = store.margin_ns / 1e6
    print(json.dumps(counts), flush=True)


# An older tree's bookings do not keep their slot on Redis's clock: read from the replies.
_OLD_SLOTS: dict[tuple[int, int], int] = {}


def _server_slot(booking: Any) -> int:
    slot = getattr(booking, "server_slot", 0)
    return slot or _OLD_SLOTS.get((booking.sent_ns, booking.recv_ns), 0)


def _trace_give_backs(
    limiter: Any, given_back: list[list[int]], bookings: list[list[int]] | None = None
) -> None:
    """Record every booking the limiter gives back (returned with its re-booking, or alone),
    and (``bookings``) every booking: [sent, recv, server now, wait (ticks), the limit
    arguments' length and the arguments, amounts, ids, then the ids and amounts given back
    in the same call]."""
    store = limiter.store
    reserve, give_back, booked = store.reserve, store.give_back, store._booking

    def with_slot(amounts: Any, reply: Any, sent: int, recv: int) -> Any:
        _OLD_SLOTS[(sent, recv)] = reply[1] + reply[0]
        return booked(amounts, reply, sent, recv)

    store._booking = with_slot

    def note(booking: Any) -> None:
        given_back.append(
            [time.monotonic_ns(), _server_slot(booking), booking.sent_ns, *booking.ids]
        )

    def traced_reserve(amounts: Any, *, book: bool = True, release: Any = None) -> Any:
        if release is not None:
            note(release)
        booking = reserve(amounts, book=book, release=release)
        if bookings is not None:  # what the script was given and answered, for --replay
            back = list(release.ids) + list(release.amounts) if release is not None else []
            limit_args = store._limit_args(booking.margin_ns)
            server_now = _server_slot(booking) - booking.wait_ns // 1000
            bookings.append(
                [
                    *(booking.sent_ns, booking.recv_ns, server_now, booking.wait_ns // 1000),
                    *(len(limit_args), *limit_args, *amounts, *booking.ids, *back),
                ]
            )
        return booking

    def traced_give_back(booking: Any) -> None:
        note(booking)
        give_back(booking)

    store.reserve, store.give_back = traced_reserve, traced_give_back


def _trace_row(limiter: Any, granted: int, start_ns: int) -> list[int]:
    booking = limiter._bookings[granted]
    # the stamp of its entry: the slot plus the whole margin it was booked with (the limit's
    # own and the measured one), as the script computes it (an older tree's booking has no
    # server slot: its starts are timed, not placed)
    slot = _server_slot(booking)
    stamp = slot + limiter.store._limit_args(booking.margin_ns)[3] if slot else 0
    return [
        start_ns,
        granted,
        booking.slot_ns,
        booking.start_ns,
        slot,
        stamp,
        booking.margin_ns,
        booking.sent_ns,
        booking.recv_ns,
        booking.wait_ns,
        threading.get_ident() % 100_000,
        *booking.ids,
    ]


def _explain_excess(shares: list[dict[str, Any]]) -> None:
    """BENCH_DIAG=trace: every 1 s window with more than RATE starts, and what its grants were.

    A start must lie between its slot and its entry's stamp (slot + margin) on Redis's clock;
    the script never lets more than RATE such intervals into a window. For each start the
    local clock maps to Redis's within [low, high] (from its booking's round trip): a start is
    surely past its stamp when start + low > stamp."""
    rows = []
    for p, s in enumerate(shares):
        for r in s.get("trace", []):
            start, check, slot_lo, slot_hi, slot, stamp, margin, sent, recv, wait, tid = r[:11]
            high = slot * 1000 - slot_lo  # server minus local, upper bound
            low = slot * 1000 - slot_hi
            rows.append(
                {
                    "proc": p,
                    "tid": tid,
                    "start": start,
                    "check": check,
                    "check_to_start_ms": (start - check) / 1e6,
                    # >0: started after its stamp (certainly, by the low bound)
                    "past_stamp_ms": (start + low - stamp * 1000) / 1e6,
                    # >0: started before its slot
                    "before_slot_ms": (slot * 1000 - (start + high)) / 1e6,
                    "check_past_slot_ms": (check - slot_lo) / 1e6,
                    "margin_ms": margin / 1e6,
                    "rtt_ms": (recv - sent) / 1e6,
                    "wait_ms": wait / 1e6,
                    "slot": slot,
                    "stamp": stamp,
                    "uncertainty_us": (high - low) / 1e3,
                    "ids": tuple(r[11:]),
                    "sent": sent,
                }
            )
    if not rows:
        return
    rows.sort(key=lambda r: r["start"])
    # a booking is known by its process, slot and when it was sent
    backs = {(p, g[1], g[2]): g for p, s in enumerate(shares) for g in s.get("given_back", [])}
    started_back = [r for r in rows if (r["proc"], r["slot"], r["sent"]) in backs]
    gaps = sorted(r["check_to_start_ms"] for r in rows)
    q = [round(gaps[int(x * (len(gaps) - 1))], 3) for x in (0.5, 0.9, 0.99, 0.999, 1)]
    past = [r for r in rows if r["slot"] and r["past_stamp_ms"] > 0]
    early = [r for r in rows if r["slot"] and r["before_slot_ms"] > 0]
    print(
        f"TRACE starts {len(rows)} | check->start ms p50/p90/p99/p999/max {q} | "
        f"started past their stamp {len(past)} | before their slot {len(early)} | "
        f"given back {sum(len(s.get('given_back', [])) for s in shares)} "
        f"(of which started: {len(started_back)})",
        file=sys.stderr,
    )
    for r in started_back:
        g = backs[(r["proc"], r["slot"], r["sent"])]
        print(
            f"TRACE started, and given back {(g[0] - r['start']) / 1e6:.3f} ms after its start:",
            json.dumps(_rounded(r)),
            file=sys.stderr,
        )
    for r in past:
        print("TRACE past stamp:", json.dumps(_rounded(r)), file=sys.stderr)
    for r in early:
        print("TRACE before slot:", json.dumps(_rounded(r)), file=sys.stderr)
    seen = -1
    windows: list[list[dict[str, Any]]] = []
    for i in range(len(rows) - RATE):
        first, last = rows[i], rows[i + RATE]
        if last["start"] - first["start"] >= 1_000_000_000 or i <= seen:
            continue
        seen = i + RATE
        inside = rows[i : i + RATE + 1]
        print(
            f"TRACE {RATE + 1} starts within {(last['start'] - first['start']) / 1e6:.3f} ms; "
            f"first's stamp -> last's slot on Redis: {(last['slot'] - first['stamp']) / 1e3:.3f}"
            f" ms; past their stamp inside: {sum(r['past_stamp_ms'] > 0 for r in inside)}",
            file=sys.stderr,
        )
        print("TRACE   first:", json.dumps(_rounded(first)), file=sys.stderr)
        print("TRACE   last: ", json.dumps(_rounded(last)), file=sys.stderr)
        windows.append(inside)
    dump = os.environ.get("BENCH_TRACE_DUMP")
    if dump:  # one line per row: its 201-windows' grants, every give-back and every booking
        with open(dump, "a") as out:
            given = [list(g) for s in shares for g in s.get("given_back", [])]
            booked = [[p, *b] for p, s in enumerate(shares) for b in s.get("bookings", [])]
            line = {"windows": windows, "given_back": given, "bookings": booked}
            out.write(json.dumps(line) + "\n")


def _rounded(row: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}


def _quantiles_ms(samples: Any) -> list[float]:
    xs = sorted(samples)
    if not xs:
        return []
    return [round(xs[int(q * (len(xs) - 1))] / 1e6, 1) for q in (0.5, 0.9, 0.99, 1)]


def _window_share(times: list[float]) -> float | None:
    """The steady share of the rate, independent of how the first window filled: in a
    saturated sliding log, arrival i + N comes one (lengthened) window after arrival i, so
    W / median(t[i + N] - t[i]) over the arrivals after the first window and before the last
    is the share of N per W achieved (1.0 for an exact log, below for a margin or idle slots).
    The old figure, from the (N+1)-th arrival to the last, also counts how the processes
    started (the first window's spread repeats in every later one) and how they ended."""
    times = sorted(times)
    gaps = [times[i + RATE] - times[i] for i in range(RATE, len(times) - RATE)]
    return round(1.0 / statistics.median(gaps), 3) if gaps else None


def _most_in_any_second(times: list[float]) -> int:
    times = sorted(times)
    most, j = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - 1.0:
            j += 1
        most = max(most, i - j + 1)
    return most


def _command_calls(redis_url: str, reset: bool = False) -> dict[str, int]:
    """Redis's own count of the commands it ran since the last reset (INFO commandstats), by
    command: what the round trips per grant are made of (the proxy counts chunks, which a
    pipeline or a handshake's tail may merge)."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        if reset:
            client.config_resetstat()
            return {}
        stats = client.info("commandstats")
    finally:
        client.close()
    calls = {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}
    # Redis counts the commands a script runs too: keep what clients sent. paceline's script
    # reads TIME once per call; the other libraries' scripts and commands are their own.
    from paceline._ratestore.script import LUA

    inner = {name.lower() for name in re.findall(r"redis\.p?call\('(\w+)'", LUA)}
    scripts = calls.get("evalsha", 0) + calls.get("eval", 0)
    sent = {k: v for k, v in calls.items() if k not in inner | {"config|resetstat", "info"}}
    if calls.get("time", 0) > scripts:
        sent["time"] = calls["time"] - scripts
    return sent


def scenario(
    lib: str,
    redis_url: str,
    api: Any,
    procs: int,
    threads: int,
    calls: int,
    during: Any = None,
    stats_url: str | None = None,
) -> dict[str, Any]:
    key = f"bench-{lib.split('@')[0]}-{uuid.uuid4().hex[:6]}"
    api.reset()
    stats_url = stats_url or redis_url
    _command_calls(stats_url, reset=True)
    per = calls // procs
    children = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--worker",
                lib,
                redis_url,
                key,
                api.url,
                str(per),
                str(threads),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(procs)
    ]
    if during is not None:
        during(api)
    shares, codes = [], []
    for child in children:
        out, err = child.communicate(timeout=600)
        codes.append(child.returncode)
        try:
            shares.append(json.loads(out.strip().splitlines()[-1]))
        except (ValueError, IndexError):
            shares.append({"ok": 0, "error": err.strip().splitlines()[-1:]})
        if os.environ.get("BENCH_DIAG") and err.strip():
            print(f"worker stderr: {err.strip()[-1500:]}", file=sys.stderr)
    if os.environ.get("BENCH_DIAG"):
        for s in shares:
            hidden = ("starts", "trace", "given_back", "bookings")
            print({k: v for k, v in s.items() if k not in hidden}, file=sys.stderr)
        _explain_excess(shares)
    commands = _command_calls(stats_url)
    stats = api.stats(times=True)
    times = stats["accepted_times_s"]
    # The steady rate: a log lets RATE through at once, then RATE per second; the processes
    # start over a second or so on 2 cores, so measure from the (RATE+1)-th arrival on.
    steady = times[RATE:]
    span = steady[-1] - steady[0] if len(steady) > 1 else 0.0
    ideal = (len(steady) - 1) / RATE
    return {
        "lib": lib,
        "exit_codes": codes,
        "accepted": stats["accepted"],
        "max_in_any_1s": stats["max_accepted_in_any_window"],
        # what the limiter promises: starts, on the machine's one monotonic clock
        "max_starts_in_any_1s": _most_in_any_second(
            [t for s in shares for t in s.get("starts", [])]
        ),
        "429": stats["throttled_429"],
        "fraction_of_rate": round(ideal / span, 3) if span else None,
        "window_share": _window_share(times),
        "shares": [s.get("ok", 0) for s in shares],
        # paceline's own count: script calls (bookings, re-bookings, give-backs), without the
        # warm-up (SCRIPT LOAD, TIME) the proxy also counts (connections cost none since issue 15)
        "script_calls_per_grant": round(
            sum(s.get("script_calls", 0) for s in shares) / max(stats["accepted"], 1), 3
        )
        if lib.startswith("paceline")
        else None,
        # the commands clients sent, per grant (evalsha, hello, script|load, time, ...)
        "commands_per_grant": round(sum(commands.values()) / max(stats["accepted"], 1), 3),
        "commands": commands,
    }


def _most_in_a_window(grants: list[tuple[int, int]], window: int) -> int:
    """The most grants one window of ``window`` ticks can hold, each starting anywhere in its
    ``(slot, latest)``: a window opening at some grant's latest start holds every grant whose
    latest start is at or after it and whose slot is before its end."""
    grants = sorted(grants, key=lambda g: g[1])
    best = 0
    for first in grants:
        best = max(best, sum(1 for g in grants if g[1] >= first[1] and g[0] < first[1] + window))
    return best


def replay(path: str) -> None:
    """``--replay DUMP``: run every booking a ``BENCH_TRACE_DUMP`` kept through this tree's
    script on a fresh Redis, in the order Redis ran them (its clock), with the ``now`` each
    one read and the margin, amounts and give-back each one sent; compare every wait with
    the one recorded, and count the most grants still held (not given back) that one 1 s
    window can hold, each starting anywhere between its slot and its latest start."""
    from paceline._ratestore import RedisLimitStore
    from paceline.policy.limits import Limit
    from paceline.policy.rate import Rate
    from paceline.testing.redis import RedisServer

    with open(path) as lines:
        dumps = [json.loads(line) for line in lines if line.strip()]
    for n, dump in enumerate(dumps):
        rows = []
        for b in dump["bookings"]:
            proc, sent, recv, now, wait, k = b[:6]
            limit_args = b[6 : 6 + k]
            count = limit_args[0]
            tail = b[6 + k :]
            rows.append(
                {
                    "proc": proc,
                    "sent": sent,
                    "recv": recv,
                    "now": now,
                    "wait": wait,
                    "limit_args": limit_args,
                    "amounts": tail[:count],
                    "ids": tail[count : 2 * count],
                    "back": tail[2 * count :],
                }
            )
        rows.sort(key=lambda r: (r["now"], r["recv"]))
        released = {(g[1], g[2]) for g in dump["given_back"]}
        ids: dict[int, int] = {}  # recorded id -> replayed id
        differ = []
        with RedisServer() as server:
            store = RedisLimitStore(server.url, "replay", [Limit(Rate(RATE, 1_000_000_000))])
            for r in rows:
                args: list[Any] = ["r", r["now"], 1_000_000, 0, *r["limit_args"], *r["amounts"]]
                if r["back"]:
                    half = len(r["back"]) // 2
                    for id_, amount in zip(r["back"][:half], r["back"][half:], strict=True):
                        args += [ids.get(id_, -1), amount]
                reply = store.run_raw(args)
                r["replayed_wait"] = reply[0]
                for old, new in zip(r["ids"], reply[2 : 2 + len(r["ids"])], strict=True):
                    if ids.setdefault(old, new) != new:
                        differ.append(("id", old, new))
                if reply[0] != r["wait"]:
                    differ.append(("wait", r["now"], r["wait"], reply[0]))
            store.close()
        window = rows[0]["limit_args"][2] if rows else 0
        held = [r for r in rows if (r["now"] + r["wait"], r["sent"]) not in released]
        recorded = [(r["now"] + r["wait"], r["now"] + r["wait"] + r["limit_args"][3]) for r in held]
        replayed = [
            (r["now"] + r["replayed_wait"], r["now"] + r["replayed_wait"] + r["limit_args"][3])
            for r in held
        ]
        print(
            f"dump {n}: {len(rows)} bookings ({len(rows) - len(held)} given back), "
            f"waits that differ {sum(d[0] == 'wait' for d in differ)}, "
            f"ids that differ {sum(d[0] == 'id' for d in differ)}; most held grants one "
            f"window can hold: recorded {_most_in_a_window(recorded, window)}, "
            f"replayed {_most_in_a_window(replayed, window)}"
        )
        for d in differ[:10]:
            print("  differs:", d)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--replay":
        replay(sys.argv[2])
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        _, _, lib, url, key, api, calls, threads = sys.argv
        worker(lib, url, key, api, int(calls), int(threads))
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--only", default="paceline,limits,pyrate")
    parser.add_argument("--skip", default="", help="scenarios to skip, e.g. fairness,restart")
    args = parser.parse_args()
    libs = args.only.split(",")
    skip = set(args.skip.split(","))
    from paceline.testing.api_server import ApiConfig, ApiServer
    from paceline.testing.redis import LatencyProxy, RedisServer

    results: list[dict[str, Any]] = []
    config = ApiConfig(quota=RATE, window_s=1.0, base_latency_s=0)
    with RedisServer() as server, ApiServer.spawn(config) as api:
        time.sleep(2.5)  # past the fence of a Redis that just started
        for label, delay, jitter in (("direct", 0.0, 0.0), ("latency 1-5 ms", 0.001, 0.004)):
            if label.split()[0] in skip:
                continue
            for lib in libs:
                with LatencyProxy(server.port, delay, jitter) as proxy:
                    row = scenario(lib, proxy.url, api, 4, 16, args.calls, stats_url=server.url)
                    row["round_trips_per_grant"] = round(
                        proxy.requests / max(row["accepted"], 1), 2
                    )
                row["scenario"] = f"4x16 {label}"
                results.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "starts"}), flush=True)
        if "restart" not in skip:
            for lib in [lib for lib in libs if lib.startswith("paceline")]:

                def restart(api: Any) -> None:
                    deadline = time.monotonic() + 30
                    while api.stats()["accepted"] < RATE + 50 and time.monotonic() < deadline:
                        time.sleep(0.01)
                    server.restart()  # inside the second window, empty

                row = scenario(lib, server.url, api, 4, 16, args.calls, during=restart)
                row["scenario"] = "4x16 restart inside a window"
                results.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "starts"}), flush=True)
            time.sleep(2.5)
        if "fairness" not in skip:
            for lib in libs:
                row = scenario(lib, server.url, api, 8, 64, 2 * args.calls)
                fair = sum(row["shares"]) / len(row["shares"])
                row["share_spread"] = [round(s / fair - 1, 3) for s in row["shares"]]
                row["scenario"] = "8x64 fairness"
                results.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "starts"}), flush=True)
    print(
        "\nscenario | library | max arrivals in any 1 s | max starts in any 1 s | 429 | "
        "fraction of rate | window share | round trips/grant (proxy) | script calls/grant | "
        "Redis commands/grant"
    )
    for row in results:
        print(
            f"{row['scenario']} | {row['lib']} | {row['max_in_any_1s']} | "
            f"{row['max_starts_in_any_1s']} | {row['429']} | "
            f"{row['fraction_of_rate']} | {row['window_share']} | "
            f"{row.get('round_trips_per_grant', '-')} | "
            f"{row['script_calls_per_grant'] or '-'} | {row['commands_per_grant']}"
            + (f" | shares {row['share_spread']}" if "share_spread" in row else "")
        )


if __name__ == "__main__":
    main()
