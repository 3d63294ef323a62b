"""Bulk endpoints: many keys per call, where the server offers one — a hundred keys then cost one
request of the quota instead of a hundred."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, TypeVar

from paceline._results import ErrorCode, Failure, Result, Success
from paceline.errors import InvalidArgument, PacelineError
from paceline.faces.batch import AllBatchOptions, batch_execute, checked_options

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack from Python 3.11; only for mypy

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class MissingFromBulkAnswer(PacelineError, LookupError):
    """The bulk call succeeded but its answer had nothing for this key."""

    error_code = ErrorCode.NOT_FOUND


def _chunks(keys: Iterable[K], size: int) -> Iterator[list[K]]:
    chunk: list[K] = []
    for key in keys:
        chunk.append(key)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


async def fetch_many(
    keys: Iterable[K],
    fetch_chunk: Callable[[list[K]], Awaitable[Mapping[K, V]]],
    chunk_size: int = 100,
    **options: Unpack[AllBatchOptions],
) -> list[Result[V]]:
    """Fetch ``keys`` through a bulk endpoint: ``await fetch_chunk(chunk)`` returns a mapping
    from key to value for up to ``chunk_size`` keys at a time. Returns a ``Result`` per key,
    in key order: a key missing from its chunk's answer is a ``Failure`` with
    ``ErrorCode.NOT_FOUND``; a chunk that fails gives each of its keys that failure.

    Limits, retries, halt rules and journals (``options``, as for
    :func:`~paceline.batch_execute`) apply per bulk call: a limit of 10/s means ten bulk
    calls a second, whatever their size.

    >>> import asyncio
    >>> async def lookup(ids: list[int]) -> dict[int, str]:
    ...     return {i: f"item {i}" for i in ids if i != 3}
    >>> results = asyncio.run(fetch_many(range(5), lookup, chunk_size=2))
    >>> [r.value if r.is_success else r.error_code.value for r in results]
    ['item 0', 'item 1', 'item 2', 'not_found', 'item 4']
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise InvalidArgument(f"chunk_size={chunk_size!r}: must be a whole number of at least 1")
    checked_options("fetch_many", dict(options), AllBatchOptions)
    chunks = list(_chunks(keys, chunk_size))
    answers = await batch_execute(chunks, fetch_chunk, **options)
    results: list[Result[V]] = []
    for chunk, answer in zip(chunks, answers, strict=True):
        if isinstance(answer, Failure):
            results.extend(answer for _ in chunk)
            continue
        found = answer.value
        if not isinstance(found, Mapping):
            error = TypeError(
                f"fetch_chunk returned {type(found).__name__}, not a mapping of key to value"
            )
            results.extend(Failure(error, ErrorCode.INVALID_INPUT) for _ in chunk)
            continue
        for key in chunk:
            if key in found:
                results.append(Success(found[key]))
            else:
                missing = MissingFromBulkAnswer(f"{key!r} is not in the bulk answer")
                results.append(Failure(missing, ErrorCode.NOT_FOUND))
    return results
