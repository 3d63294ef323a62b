"""Result types: one item's outcome, and a whole batch's.

``Result[T]`` is ``Success[T] | Failure`` (what :func:`paceline.batch_execute` returns per key);
:class:`BatchItemResult` and :class:`BatchResult` are what the sync executors return.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeAlias, TypeVar, overload

from paceline.errors import ErrorCode as ErrorCode
from paceline.errors import PacelineError
from paceline.errors import error_code_for as error_code_for

T = TypeVar("T")


class Success(Generic[T]):
    """A successful outcome holding ``value``.

    >>> r = Success(42)
    >>> r.is_success, r.value
    (True, 42)
    """

    __slots__ = ("value",)
    is_success = True
    is_failure = False

    def __init__(self, value: T) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"Success({self.value!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Success) and bool(self.value == other.value)

    __hash__ = None  # type: ignore[assignment]  # mutable payloads: like a dataclass(eq=True)


class BatchInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) stopped a sync batch: ``partial`` holds what settled before it.

    It is a ``KeyboardInterrupt``, so code that does not look for it still stops as usual.
    That is also why it is the one error of paceline's that is not a
    :class:`~paceline.PacelineError`: an ``except Exception`` (or ``except PacelineError``)
    around a batch must not swallow Ctrl-C.

    >>> import paceline
    >>> issubclass(paceline.BatchInterrupted, KeyboardInterrupt)
    True
    """

    def __init__(self, partial: BatchResult) -> None:
        super().__init__(
            f"interrupted: {len(partial)} of {partial.total} items settled "
            f"({partial.successful} succeeded, {partial.failed} failed)"
        )
        self.partial = partial


class NotAttempted(PacelineError):
    """The item never ran: the batch halted first (the message says why)."""

    error_code = "cancelled"


class Failure:
    """A failed outcome: the original exception, a classified ``error_code`` and a message.

    >>> f = Failure.from_exception(TimeoutError("slow"))
    >>> f.is_failure, f.error_code, f.message
    (True, <ErrorCode.TIMEOUT: 'timeout'>, 'slow')
    """

    __slots__ = ("error", "error_code", "message")
    is_success = False
    is_failure = True

    def __init__(
        self,
        error: BaseException,
        error_code: ErrorCode = ErrorCode.UNKNOWN,
        message: str | None = None,
    ) -> None:
        self.error = error
        self.error_code = error_code
        self.message = message if message is not None else (str(error) or type(error).__name__)

    @classmethod
    def from_exception(cls, error: BaseException) -> Failure:
        """Wrap an exception, classifying it (see :class:`ErrorCode`)."""
        return cls(error, error_code_for(error))

    @property
    def value(self) -> Any:
        """A failure has no value: reading it re-raises the original exception."""
        raise self.error

    def __repr__(self) -> str:
        return f"Failure({self.error_code.value}: {self.message!r})"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Failure)
            and self.error is other.error
            and self.error_code == other.error_code
            and self.message == other.message
        )

    __hash__ = None  # type: ignore[assignment]


Result: TypeAlias = Success[T] | Failure
"""``Success[T] | Failure``: the outcome of one key in :func:`paceline.batch_execute`."""


@dataclass(frozen=True, slots=True)
class Attempt:
    """One attempt at an item: when it started (monotonic ns), how long it took, and how it
    failed (``error`` is ``None`` for the attempt that succeeded)."""

    number: int
    started_ns: int
    duration_s: float
    error: str | None = None
    error_type: str | None = None


@dataclass(slots=True)
class BatchItemResult:
    """The outcome of one item of a batch.

    ``error`` is the failure's message, a plain string to log or show; ``exception`` keeps the
    original exception object, ``attempts`` how many times the operation ran, and ``started_ns`` /
    ``duration_s`` when the last attempt started (monotonic clock) and how long it took.
    ``history`` lists every attempt when there was more than one; ``restored`` is true for an
    item whose outcome came from a journal instead of running again.

    >>> BatchItemResult(item_id="tenant-2", success=False, error="API rate limit exceeded").error
    'API rate limit exceeded'
    """

    item_id: str
    success: bool
    result: Any | None = None
    error: str | None = None
    exception: BaseException | None = field(default=None, repr=False, compare=False)
    error_code: ErrorCode | None = None
    attempts: int = 1
    index: int | None = None
    started_ns: int | None = field(default=None, repr=False, compare=False)
    duration_s: float | None = field(default=None, compare=False)
    history: tuple[Attempt, ...] = field(default=(), repr=False, compare=False)
    restored: bool = False

    @classmethod
    def ok(cls, item_id: str, result: Any, **extra: Any) -> BatchItemResult:
        """A successful item."""
        return cls(item_id=item_id, success=True, result=result, **extra)

    @classmethod
    def failed(cls, item_id: str, error: BaseException, **extra: Any) -> BatchItemResult:
        """A failed item, classified and carrying its exception."""
        return cls(
            item_id=item_id,
            success=False,
            error=str(error) or type(error).__name__,
            exception=error,
            error_code=error_code_for(error),
            **extra,
        )

    def to_dict(self, encode: Callable[[Any], Any] | None = None) -> dict[str, Any]:
        """A JSON-ready dict; ``encode`` turns a result into JSON-ready data (default: as is,
        with anything JSON can't hold written as its ``repr``)."""
        data: dict[str, Any] = {"item_id": self.item_id, "success": self.success}
        if self.success:
            data["result"] = encode(self.result) if encode else self.result
        else:
            data["error"] = self.error
            data["error_code"] = self.error_code.value if self.error_code else None
            if self.exception is not None:
                data["exception_type"] = type(self.exception).__name__
        data["attempts"] = self.attempts
        if self.index is not None:
            data["index"] = self.index
        if self.duration_s is not None:
            data["duration_s"] = self.duration_s
        if self.restored:
            data["restored"] = True
        if self.history:
            data["history"] = [
                {"number": a.number, "duration_s": a.duration_s, "error": a.error}
                for a in self.history
            ]
        return data


class BatchResult(Sequence[BatchItemResult]):
    """Every item's outcome in input order, with counts.

    >>> r = BatchResult([BatchItemResult("1", True), BatchItemResult("2", False, error="E")], 2)
    >>> r.successful, r.failed, r.all_successful, [i.item_id for i in r.failed_items]
    (1, 1, False, ['2'])
    """

    __slots__ = ("_failed", "halted", "items", "rollback", "total")

    def __init__(
        self,
        items: Sequence[BatchItemResult],
        total: int | None = None,
        halted: str | None = None,
    ) -> None:
        self.items: list[BatchItemResult] = list(items)
        self.total: int = len(self.items) if total is None else total
        self.halted = halted
        """Why the batch stopped early (a halt rule, a deadline), or ``None``."""
        self.rollback: BatchResult | None = None
        """The outcomes of undoing the succeeded items after a halt (when ``undo`` was given)."""
        self._failed = sum(1 for item in self.items if not item.success)

    @property
    def successful(self) -> int:
        """How many items succeeded."""
        return len(self.items) - self._failed

    @property
    def failed(self) -> int:
        """How many items failed."""
        return self._failed

    @property
    def all_successful(self) -> bool:
        """True when no item failed (and every item has a result)."""
        return self._failed == 0 and len(self.items) == self.total

    @property
    def failed_items(self) -> list[BatchItemResult]:
        """The failed items, in input order."""
        return [item for item in self.items if not item.success]

    @property
    def not_attempted(self) -> int:
        """Items of the input that never ran because the batch halted."""
        return max(0, self.total - len(self.items))

    @property
    def results(self) -> list[Any]:
        """The successful items' results, in input order."""
        return [item.result for item in self.items if item.success]

    def __len__(self) -> int:
        return len(self.items)

    @overload
    def __getitem__(self, index: int) -> BatchItemResult: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[BatchItemResult]: ...
    def __getitem__(self, index: int | slice) -> BatchItemResult | Sequence[BatchItemResult]:
        return self.items[index]

    def __iter__(self) -> Iterator[BatchItemResult]:
        return iter(self.items)

    def __repr__(self) -> str:
        halted = f", halted={self.halted!r}" if self.halted else ""
        return (
            f"BatchResult(total={self.total}, successful={self.successful}, "
            f"failed={self.failed}{halted})"
        )

    def to_dict(self, encode: Callable[[Any], Any] | None = None) -> dict[str, Any]:
        """The whole batch as JSON-ready data."""
        return {
            "total": self.total,
            "successful": self.successful,
            "failed": self.failed,
            "all_successful": self.all_successful,
            "not_attempted": self.not_attempted,
            "halted": self.halted,
            "items": [item.to_dict(encode) for item in self.items],
        }

    def to_json(self, encode: Callable[[Any], Any] | None = None, **dumps_kwargs: Any) -> str:
        """The whole batch as a JSON document. Results JSON can't hold are written as their
        ``repr`` unless ``encode`` converts them."""
        dumps_kwargs.setdefault("default", repr)
        return json.dumps(self.to_dict(encode), **dumps_kwargs)
