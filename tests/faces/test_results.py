"""Result types: Success / Failure / ErrorCode, BatchItemResult and BatchResult (seed 000)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence

import pytest

from paceline import (
    BatchItemResult,
    BatchResult,
    ErrorCode,
    Failure,
    Success,
    Throttled,
)

pytestmark = pytest.mark.timeout(30)

# -- seed 000: BatchItemResult -------------------------------------------------------------


class TestBatchItemResult:
    def test_success_result_has_no_error(self):
        result = BatchItemResult(
            item_id="tenant-1",
            success=True,
            result={"id": "tenant-1", "name": "Test"},
        )
        assert result.success is True
        assert result.error is None
        assert result.result == {"id": "tenant-1", "name": "Test"}

    def test_failed_result_keeps_the_error_message(self):
        result = BatchItemResult(
            item_id="tenant-2",
            success=False,
            error="API rate limit exceeded",
        )
        assert result.success is False
        assert result.error == "API rate limit exceeded"
        assert result.result is None

    def test_failed_constructor_keeps_the_exception_and_classifies_it(self):
        exc = TimeoutError("slow")
        item = BatchItemResult.failed("k", exc)
        assert item.success is False
        assert item.exception is exc
        assert item.error == "slow"
        assert item.error_code is ErrorCode.TIMEOUT

    def test_failed_constructor_uses_the_type_name_for_an_empty_message(self):
        item = BatchItemResult.failed("k", KeyError())
        assert item.error  # never an empty message
        assert item.error == "KeyError"

    def test_ok_constructor_builds_a_success(self):
        item = BatchItemResult.ok("k", 7)
        assert (item.item_id, item.success, item.result, item.error) == ("k", True, 7, None)


# -- seed 000: BatchResult -----------------------------------------------------------------


class TestBatchResult:
    def test_all_successful(self):
        items = [
            BatchItemResult(item_id="1", success=True),
            BatchItemResult(item_id="2", success=True),
        ]
        result = BatchResult(items=items, total=2)
        assert result.successful == 2
        assert result.failed == 0
        assert result.all_successful is True

    def test_partial_failure_counts_both_kinds(self):
        items = [
            BatchItemResult(item_id="1", success=True),
            BatchItemResult(item_id="2", success=False, error="Failed"),
        ]
        result = BatchResult(items=items, total=2)
        assert result.successful == 1
        assert result.failed == 1
        assert result.all_successful is False

    def test_failed_items_returns_only_failures_in_input_order(self):
        items = [
            BatchItemResult(item_id="1", success=True),
            BatchItemResult(item_id="2", success=False, error="E1"),
            BatchItemResult(item_id="3", success=False, error="E2"),
        ]
        result = BatchResult(items=items, total=3)
        failed = result.failed_items
        assert len(failed) == 2
        assert all(not f.success for f in failed)
        assert [f.item_id for f in failed] == ["2", "3"]

    def test_a_batch_with_missing_items_is_not_all_successful(self):
        result = BatchResult(items=[BatchItemResult(item_id="1", success=True)], total=3)
        assert result.failed == 0
        assert result.all_successful is False

    def test_total_defaults_to_the_number_of_items(self):
        result = BatchResult([BatchItemResult("a", True), BatchItemResult("b", True)])
        assert result.total == 2

    def test_results_lists_successful_values_in_order(self):
        result = BatchResult(
            [
                BatchItemResult("a", True, result=1),
                BatchItemResult("b", False, error="x"),
                BatchItemResult("c", True, result=3),
            ]
        )
        assert result.results == [1, 3]

    def test_empty_batch_is_all_successful(self):
        result = BatchResult([], total=0)
        assert (result.successful, result.failed, result.all_successful) == (0, 0, True)
        assert len(result) == 0


class TestBatchResultIsASequence:
    def _batch(self) -> BatchResult:
        return BatchResult(
            [BatchItemResult(str(i), success=i != 1, result=i) for i in range(4)], total=4
        )

    def test_is_a_sequence(self):
        assert isinstance(self._batch(), Sequence)

    def test_len_and_indexing_follow_input_order(self):
        batch = self._batch()
        assert len(batch) == 4
        assert batch[0].item_id == "0"
        assert batch[-1].item_id == "3"

    def test_slicing_returns_the_items_in_range(self):
        assert [i.item_id for i in self._batch()[1:3]] == ["1", "2"]

    def test_iteration_and_reversal_follow_input_order(self):
        batch = self._batch()
        assert [i.item_id for i in batch] == ["0", "1", "2", "3"]
        assert [i.item_id for i in reversed(batch)] == ["3", "2", "1", "0"]

    def test_membership_and_index_work(self):
        batch = self._batch()
        second = batch[2]
        assert second in batch
        assert batch.index(second) == 2

    def test_index_out_of_range_raises_index_error(self):
        with pytest.raises(IndexError):
            self._batch()[4]


class TestBatchResultJson:
    def _batch(self) -> BatchResult:
        return BatchResult(
            [
                BatchItemResult.ok("a", {"n": 1}),
                BatchItemResult.failed("b", ValueError("bad input")),
            ],
            total=2,
        )

    def test_to_dict_has_counts_and_items_in_order(self):
        data = self._batch().to_dict()
        assert data["total"] == 2
        assert data["successful"] == 1
        assert data["failed"] == 1
        assert data["all_successful"] is False
        assert [i["item_id"] for i in data["items"]] == ["a", "b"]

    def test_to_dict_of_a_success_holds_the_result(self):
        item = self._batch().to_dict()["items"][0]
        assert item["success"] is True
        assert item["result"] == {"n": 1}
        assert "error" not in item

    def test_to_dict_of_a_failure_holds_message_code_and_exception_type(self):
        item = self._batch().to_dict()["items"][1]
        assert item["success"] is False
        assert item["error"] == "bad input"
        assert item["error_code"] == "invalid_input"
        assert item["exception_type"] == "ValueError"

    def test_to_json_round_trips_through_json_loads(self):
        batch = self._batch()
        assert json.loads(batch.to_json()) == batch.to_dict()

    def test_to_json_writes_unencodable_results_as_their_repr(self):
        class Opaque:
            def __repr__(self) -> str:
                return "<opaque 42>"

        batch = BatchResult([BatchItemResult.ok("a", Opaque())])
        data = json.loads(batch.to_json())
        assert data["items"][0]["result"] == "<opaque 42>"

    def test_to_json_uses_the_encoder_for_results(self):
        batch = BatchResult([BatchItemResult.ok("a", {3, 1, 2})])
        data = json.loads(batch.to_json(encode=sorted))
        assert data["items"][0]["result"] == [1, 2, 3]

    def test_to_json_passes_dumps_options_through(self):
        text = self._batch().to_json(indent=2)
        assert "\n  " in text
        assert json.loads(text)["total"] == 2

    def test_to_json_never_contains_the_exception_object(self):
        text = BatchResult([BatchItemResult.failed("b", RuntimeError("boom"))]).to_json()
        data = json.loads(text)
        assert data["items"][0]["error"] == "boom"
        assert data["items"][0]["exception_type"] == "RuntimeError"


# -- Result[T] = Success[T] | Failure ---------------------------------------------------------


class TestSuccess:
    def test_success_exposes_its_value(self):
        result = Success(42)
        assert result.is_success is True
        assert result.is_failure is False
        assert result.value == 42

    def test_successes_compare_by_value(self):
        assert Success([1]) == Success([1])
        assert Success(1) != Success(2)
        assert Success(1) != 1


class TestFailure:
    def test_failure_holds_the_original_exception(self):
        exc = ConnectionError("reset")
        failure = Failure.from_exception(exc)
        assert failure.is_failure is True
        assert failure.is_success is False
        assert failure.error is exc
        assert failure.message == "reset"

    def test_reading_the_value_of_a_failure_reraises_the_original_exception(self):
        exc = KeyError("missing")
        failure = Failure.from_exception(exc)
        with pytest.raises(KeyError) as info:
            _ = failure.value
        assert info.value is exc

    def test_message_falls_back_to_the_exception_type_name(self):
        assert Failure.from_exception(RuntimeError()).message == "RuntimeError"

    def test_explicit_message_wins(self):
        assert Failure(ValueError("x"), message="custom").message == "custom"

    def test_failures_are_equal_only_for_the_same_exception_object(self):
        exc = ValueError("x")
        assert Failure.from_exception(exc) == Failure.from_exception(exc)
        assert Failure.from_exception(exc) != Failure.from_exception(ValueError("x"))

    @pytest.mark.parametrize(
        ("error", "code"),
        [
            (Throttled(retry_after=1.0), ErrorCode.RATE_LIMITED),
            (TimeoutError("t"), ErrorCode.TIMEOUT),
            (asyncio.TimeoutError(), ErrorCode.TIMEOUT),
            (asyncio.CancelledError(), ErrorCode.CANCELLED),
            (PermissionError("p"), ErrorCode.PERMISSION_DENIED),
            (ConnectionRefusedError("c"), ErrorCode.CONNECTION),
            (ConnectionError("c"), ErrorCode.CONNECTION),
            (KeyError("k"), ErrorCode.NOT_FOUND),
            (FileNotFoundError("f"), ErrorCode.NOT_FOUND),
            (ValueError("v"), ErrorCode.INVALID_INPUT),
            (TypeError("t"), ErrorCode.INVALID_INPUT),
            (RuntimeError("r"), ErrorCode.UNKNOWN),
        ],
        ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
    )
    def test_from_exception_classifies_by_exception_type(self, error, code):
        assert Failure.from_exception(error).error_code is code

    def test_an_error_code_attribute_on_the_exception_wins(self):
        class NotFound(RuntimeError):
            error_code = ErrorCode.NOT_FOUND

        assert Failure.from_exception(NotFound()).error_code is ErrorCode.NOT_FOUND

    def test_an_error_code_string_attribute_is_understood(self):
        exc = RuntimeError("server")
        exc.error_code = "server_error"  # type: ignore[attr-defined]
        assert Failure.from_exception(exc).error_code is ErrorCode.SERVER_ERROR

    def test_an_unknown_error_code_string_falls_back_to_the_type(self):
        exc = ValueError("v")
        exc.error_code = "no-such-code"  # type: ignore[attr-defined]
        assert Failure.from_exception(exc).error_code is ErrorCode.INVALID_INPUT

    def test_error_code_values_are_stable_strings(self):
        assert ErrorCode.RATE_LIMITED == "rate_limited"
        assert ErrorCode("timeout") is ErrorCode.TIMEOUT
