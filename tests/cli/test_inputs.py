"""paceline.cli.inputs: JSON Lines and CSV rows, bad rows, totals, and the async reader."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paceline.cli import inputs
from paceline.cli.inputs import InputError, Row, open_rows

SKIP = "or pass --on-bad-input skip to record it as a failure and go on"


def write(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def stdin(data: bytes, fmt: str = "auto", **kwargs: int) -> inputs.RowSource:
    return open_rows("-", fmt, stdin=io.BytesIO(data), **kwargs)


def pairs(rows: Iterable[Row]) -> list[tuple[int, object]]:
    """(line, data) for good rows, (line, message) for bad ones."""
    return [(row.line, row.data if row.ok else row.error) for row in rows]


# -- JSON Lines -------------------------------------------------------------------------------


def test_jsonl_rows_skip_blank_lines_and_keep_line_numbers(tmp_path):
    path = write(tmp_path, "in.jsonl", b'{"id": 1}\n\n   \n\t\r\n{"id": 2, "x": [1]}\n{"id": 3}\n')
    with open_rows(path) as source:
        assert (source.name, source.format, source.columns) == (path, "jsonl", None)
        assert source.total == 3
        assert pairs(source) == [(1, {"id": 1}), (5, {"id": 2, "x": [1]}), (6, {"id": 3})]


def test_row_ok():
    assert Row(1, {"a": 1}).ok
    assert not Row(2, None, "bad").ok


def test_jsonl_bom_crlf_and_no_final_newline(tmp_path):
    path = write(tmp_path, "in.ndjson", b'\xef\xbb\xbf{"id": 1}\r\n\r\n{"id": "two"}')
    with open_rows(path) as source:
        assert source.total == 2
        assert pairs(source) == [(1, {"id": 1}), (3, {"id": "two"})]


def test_bad_json_lines_are_reported_with_line_and_fix(tmp_path):
    data = b'{"id": 1}\n{"a": 1 "b": 2}\n[1, 2]\n42\n"text"\nnull\n{"id": 7}\n'
    path = write(tmp_path, "input.jsonl", data)
    with open_rows(path) as source:
        assert source.total == 7
        rows = list(source)
    not_object = 'make each line one JSON object, like {"id": 1}, ' + SKIP
    assert pairs(rows) == [
        (1, {"id": 1}),
        (2, f"{path}:2: not valid JSON (Expecting ',' delimiter: column 9) — fix the line, {SKIP}"),
        (3, f"{path}:3: a JSON array, not a JSON object — {not_object}"),
        (4, f"{path}:4: a JSON number, not a JSON object — {not_object}"),
        (5, f"{path}:5: a JSON string, not a JSON object — {not_object}"),
        (6, f"{path}:6: JSON null, not a JSON object — {not_object}"),
        (7, {"id": 7}),
    ]
    assert [row.ok for row in rows] == [True, False, False, False, False, False, True]


def test_invalid_utf8_in_jsonl_is_a_bad_row_and_reading_goes_on():
    rows = list(stdin(b'{"id": 1}\n{"name": "caf\xe9"}\n{"id": 3}\n'))
    assert pairs(rows) == [
        (1, {"id": 1}),
        (
            2,
            "<stdin>:2: not valid UTF-8 (byte 0xe9 at column 14) — save the input as UTF-8 "
            f"(e.g. iconv -f latin1 -t utf-8), {SKIP}",
        ),
        (3, {"id": 3}),
    ]


def test_a_line_longer_than_the_limit_is_a_bad_row_without_being_held():
    long_line = b'{"pad": "' + b"x" * 1000 + b'"}\n'
    data = b'{"id": 1}\n' + long_line + b" " * 500 + b"\n" + b'{"id": 4}\n'
    rows = list(stdin(data, max_line_bytes=100))
    assert pairs(rows) == [
        (1, {"id": 1}),
        (
            2,
            "<stdin>:2: line longer than 100 bytes — shorten it (the limit keeps memory "
            f"bounded), {SKIP}",
        ),
        (4, {"id": 4}),  # line 3 was long but blank: skipped like any blank line
    ]


def test_rows_can_be_read_once():
    source = stdin(b'{"id": 1}\n')
    assert len(list(source)) == 1
    with pytest.raises(RuntimeError, match="only once"):
        iter(source)


# -- CSV --------------------------------------------------------------------------------------


def test_csv_rows_by_header(tmp_path):
    path = write(tmp_path, "in.csv", b"id,name\n1,Ada\n\n2,Bob\n")
    with open_rows(path) as source:
        assert (source.format, source.columns, source.delimiter) == ("csv", ["id", "name"], ",")
        assert source.total == 2
        assert pairs(source) == [(2, {"id": "1", "name": "Ada"}), (4, {"id": "2", "name": "Bob"})]


def test_tsv_by_extension_and_by_format(tmp_path):
    path = write(tmp_path, "in.tsv", b"id\tname\n1\tAda, Lovelace\n")
    with open_rows(path) as source:
        assert (source.format, source.delimiter) == ("csv", "\t")
        assert [row.data for row in source] == [{"id": "1", "name": "Ada, Lovelace"}]
    source = stdin(b"id\tname\n1\tAda\n", "tsv")
    assert (source.format, source.delimiter, source.columns) == ("csv", "\t", ["id", "name"])


def test_csv_bom_crlf_no_final_newline_and_header_spaces(tmp_path):
    path = write(tmp_path, "in.csv", b"\xef\xbb\xbfid, name\r\n1,Ada\r\n2,Bob")
    with open_rows(path) as source:
        assert source.columns == ["id", "name"]  # no BOM in the first name; spaces stripped
        assert source.total == 2
        assert pairs(source) == [(2, {"id": "1", "name": "Ada"}), (3, {"id": "2", "name": "Bob"})]


def test_quoted_csv_field_with_newlines_keeps_line_numbers_right(tmp_path):
    data = b'id,text\n1,"two\nlines"\n2,"three\r\nline\r\nfield"\n3,"a ""quoted"", b"\n4,plain\n'
    path = write(tmp_path, "in.csv", data)
    with open_rows(path) as source:
        assert source.total == 4
        assert pairs(source) == [
            (2, {"id": "1", "text": "two\nlines"}),
            (4, {"id": "2", "text": "three\r\nline\r\nfield"}),
            (7, {"id": "3", "text": 'a "quoted", b'}),
            (8, {"id": "4", "text": "plain"}),
        ]


def test_csv_wrong_field_counts_are_bad_rows(tmp_path):
    path = write(tmp_path, "input.csv", b'id,name\n1,Ada,extra\n2\n3,"x\ny",z\n4,Bob\n')
    with open_rows(path) as source:
        assert source.total == 4
        rows = list(source)
    fix = f"fix the line (put quotes around a field that contains a comma), {SKIP}"
    assert pairs(rows) == [
        (2, f"{path}:2: 3 fields, but the header has 2 (id, name) — {fix}"),
        (3, f"{path}:3: 1 field, but the header has 2 (id, name) — {fix}"),
        (
            4,
            f"{path}:4: 3 fields, but the header has 2 (id, name); this record runs from line 4 "
            f"to 5: unclosed quote? — {fix}",
        ),
        (6, {"id": "4", "name": "Bob"}),
    ]


def test_csv_quote_errors_are_bad_rows():
    rows = list(stdin(b'id,name\n1,"a"b\n2,ok\n3,"never closed\n4,x\n', "csv"))
    assert pairs(rows) == [
        (
            2,
            "<stdin>:2: text after the closing quote of a quoted field — quote the whole field "
            f'(inside quotes, write "" for a literal "), {SKIP}',
        ),
        (3, {"id": "2", "name": "ok"}),
        (
            4,
            "<stdin>:4: a quoted field that starts on line 4 is not closed by the end of the "
            f'input — close the quote (inside quotes, write "" for a literal "), {SKIP}',
        ),
    ]


def test_invalid_utf8_in_csv_is_a_bad_row():
    rows = list(stdin(b"id,name\n1,caf\xe9\n2,ok\n", "csv"))
    assert pairs(rows) == [
        (
            2,
            "<stdin>:2: not valid UTF-8 (byte 0xe9 at line 2, column 6) — save the input as "
            f"UTF-8 (e.g. iconv -f latin1 -t utf-8), {SKIP}",
        ),
        (3, {"id": "2", "name": "ok"}),
    ]


def test_csv_header_problems_are_input_errors(tmp_path):
    empty = write(tmp_path, "empty.csv", b"\n\n")
    with pytest.raises(InputError) as info:
        open_rows(empty)
    assert str(info.value) == (
        f"{empty}: no CSV header (the input is empty) — the first line must name the columns, "
        "e.g. id,name"
    )
    twice = write(tmp_path, "twice.csv", b"id,name,id\n1,2,3\n")
    with pytest.raises(InputError) as info:
        open_rows(twice)
    assert str(info.value) == (
        f"{twice}:1: column 'id' appears twice in the CSV header — rename one so that each "
        "column has its own name"
    )
    with pytest.raises(InputError, match=r"header is not valid UTF-8 \(byte 0xff at line 1"):
        stdin(b"id,\xff\n1,2\n", "csv")


# -- formats, opening -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [("a.jsonl", "jsonl"), ("a.NDJSON", "jsonl"), ("a.json", "jsonl"), ("a.csv", "csv")],
)
def test_auto_format_by_extension(tmp_path, name, expected):
    # The content would sniff the other way: the extension wins.
    content = b"id\n1\n" if expected == "jsonl" else b'{"id": 1}\n'
    with open_rows(write(tmp_path, name, content)) as source:
        assert source.format == expected


def test_auto_format_by_sniffing(tmp_path):
    assert stdin(b'\n  \n  {"id": 1}\n').format == "jsonl"
    source = stdin(b'\n\nid,name\n1,"{x}"\n')
    assert (source.format, source.columns) == ("csv", ["id", "name"])
    assert pairs(source) == [(4, {"id": "1", "name": "{x}"})]
    source = stdin(b"id\tname\n1\tAda\n")
    assert (source.format, source.delimiter) == ("csv", "\t")
    empty = stdin(b"")
    assert (empty.format, list(empty)) == ("jsonl", [])
    with open_rows(write(tmp_path, "data.txt", b"id,name\n1,Ada\n")) as source:
        assert (source.format, source.total) == ("csv", 1)
    # Sniffing JSON Lines keeps the first line (and its number) for the rows.
    source = stdin(b'\n{"id": 1}\n{"id": 2}\n')
    assert pairs(source) == [(2, {"id": 1}), (3, {"id": 2})]


def test_explicit_format_overrides_the_extension(tmp_path):
    with open_rows(write(tmp_path, "rows.txt", b'{"id": 1}\n'), "jsonl") as source:
        assert pairs(source) == [(1, {"id": 1})]
    with open_rows(write(tmp_path, "rows.jsonl", b"id\n1\n"), "csv") as source:
        assert source.columns == ["id"]


def test_unusable_inputs_raise_input_error(tmp_path):
    missing = str(tmp_path / "nope.jsonl")
    with pytest.raises(InputError) as info:
        open_rows(missing)
    assert str(info.value) == (
        f"{missing}: no such file — check the path, or pass - to read standard input"
    )
    with pytest.raises(InputError, match="is a directory — pass a JSON Lines or CSV file"):
        open_rows(str(tmp_path))
    with pytest.raises(InputError) as info:
        open_rows(missing, "xml")
    assert str(info.value) == "--format 'xml': unknown format — use auto, jsonl or csv"


def test_close_closes_the_file_it_opened_but_not_stdin(tmp_path):
    source = open_rows(write(tmp_path, "a.jsonl", b'{"id": 1}\n'))
    stream = source._stream
    source.close()
    assert stream.closed
    buffer = io.BytesIO(b'{"id": 1}\n')
    open_rows("-", stdin=buffer).close()
    assert not buffer.closed


# -- totals -----------------------------------------------------------------------------------


def test_total_is_none_for_stdin_and_pipes():
    assert stdin(b'{"id": 1}\n').total is None
    read_fd, write_fd = os.pipe()
    os.write(write_fd, b'{"id": 1}\n')
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe, open_rows("-", stdin=pipe) as source:
        assert source.total is None
        assert pairs(source) == [(1, {"id": 1})]


def test_total_of_a_fifo_is_none(tmp_path):
    fifo = str(tmp_path / "rows.jsonl")
    os.mkfifo(fifo)

    def writer() -> None:
        with open(fifo, "wb") as f:
            f.write(b'{"id": 1}\n{"id": 2}\n')

    thread = threading.Thread(target=writer)
    thread.start()
    with open_rows(fifo) as source:
        assert source.total is None
        assert [row.data for row in source] == [{"id": 1}, {"id": 2}]
    thread.join()


def test_total_counts_in_chunks_exactly():
    data = b'\xef\xbb\xbf{"a":1}\n \n\n{"b":\n\t\r\n' + b'{"c": "' + b"y" * 50 + b'"}\r\n  x'
    for size in (1, 2, 3, 5, 7, 64, 1 << 20):
        assert inputs._count_jsonl(io.BytesIO(data), size) == 4, size


def test_csv_total_is_none_above_the_size_limit(tmp_path, monkeypatch):
    path = write(tmp_path, "big.csv", b"id\n" + b"1\n" * 100)
    monkeypatch.setattr(inputs, "CSV_COUNT_MAX_BYTES", 100)
    with open_rows(path) as source:
        assert source.total is None
        assert len(list(source)) == 100


jsonl_pieces = st.sampled_from(
    [b"{}", b'{"a": 1}', b"[1]", b" ", b"\t", b"\r", b"\n", b"\n", b"\x0b", b"x", b"\xff", b"{"]
)


@settings(max_examples=300, deadline=None)
@given(
    bom=st.booleans(),
    pieces=st.lists(jsonl_pieces, max_size=40),
    chunk=st.integers(1, 12),
    limit=st.sampled_from([16, 1000]),
)
def test_jsonl_total_matches_the_rows_read(bom, pieces, chunk, limit):
    data = (b"\xef\xbb\xbf" if bom else b"") + b"".join(pieces)
    rows = list(stdin(data, "jsonl", max_line_bytes=limit))
    assert inputs._count_jsonl(io.BytesIO(data), chunk) == len(rows)
    lines = [row.line for row in rows]
    assert lines == sorted(set(lines))


csv_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(csv_text, csv_text, csv_text), max_size=8), st.sampled_from([",", "\t"]))
def test_csv_round_trip_of_arbitrary_strings(records, delimiter):
    text = io.StringIO(newline="")
    writer = csv.writer(text, delimiter=delimiter)
    writer.writerow(["a", "b", "c"])
    writer.writerows(records)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "rows.tsv" if delimiter == "\t" else "rows.csv")
        with open(path, "wb") as f:
            f.write(text.getvalue().encode("utf-8"))
        with open_rows(path) as source:
            assert source.delimiter == delimiter
            assert source.total == len(records)
            rows = list(source)
    assert [row.error for row in rows] == [None] * len(records)
    assert [row.data for row in rows] == [dict(zip("abc", r, strict=True)) for r in records]


def test_csv_total_from_file_matches_rows(tmp_path):
    data = b'id,v\n1,"a\nb"\n\n2,x,y\n3,"c\xff"\n 4 , z\n'
    path = write(tmp_path, "t.csv", data)
    with open_rows(path) as source:
        assert source.total == 4
        assert len(list(source)) == 4


# -- async ------------------------------------------------------------------------------------


def test_aiter_on_a_regular_file_gives_the_same_rows(tmp_path):
    lines = b"".join(json.dumps({"i": i}).encode() + b"\n" for i in range(300))
    path = write(tmp_path, "a.jsonl", lines + b"oops\n")

    async def collect() -> list[Row]:
        with open_rows(path) as source:
            return [row async for row in source.aiter()]

    rows = asyncio.run(collect())
    assert [row.data for row in rows[:300]] == [{"i": i} for i in range(300)]
    assert (rows[300].line, rows[300].ok) == (301, False)


class PipeWriter:
    """Writes lines into a real pipe from a thread; counts the lines written in full."""

    def __init__(self, lines: list[bytes], *, hold_after_first: bool = False) -> None:
        self.read_fd, self.write_fd = os.pipe()
        self.lines = lines
        self.written = 0
        self.first_written = threading.Event()
        self.proceed = threading.Event()
        self.finished = threading.Event()
        self.hold_after_first = hold_after_first
        self.broken = False
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            for index, line in enumerate(self.lines):
                view = memoryview(line)
                while view:
                    view = view[os.write(self.write_fd, view) :]
                self.written += 1
                if index == 0:
                    self.first_written.set()
                    if self.hold_after_first:
                        self.proceed.wait(10)
        except BrokenPipeError:  # the reader closed its end: fine, stop writing
            self.broken = True
        finally:
            os.close(self.write_fd)
            self.finished.set()


@pytest.mark.timeout(30)
def test_aiter_on_a_pipe_delivers_a_lone_row_before_the_writer_finishes():
    writer = PipeWriter([b'{"id": 1}\n', b'{"id": 2}\n'], hold_after_first=True)

    async def consume() -> list[tuple[object, bool]]:
        seen = []
        writer.thread.start()  # before open_rows, which waits for the first line to sniff it
        with os.fdopen(writer.read_fd, "rb") as pipe, open_rows("-", stdin=pipe) as source:
            async for row in source.aiter():
                seen.append((row.data, writer.finished.is_set()))
                writer.proceed.set()  # only now may the writer send row 2 and close
        return seen

    seen = asyncio.run(asyncio.wait_for(consume(), 10))
    # Row 1 came while the writer was still waiting to be told to go on (and had not finished).
    assert seen[0] == ({"id": 1}, False)
    assert [data for data, _ in seen] == [{"id": 1}, {"id": 2}]


@pytest.mark.timeout(30)
def test_aiter_on_a_pipe_does_not_block_the_event_loop():
    writer = PipeWriter([b'{"id": 1}\n'])
    ticked = threading.Event()
    timed_out = []

    def gated() -> None:
        # Writes only once the loop has run another task while the reader waits for data.
        timed_out.append(not ticked.wait(5))
        PipeWriter._run(writer)

    async def ticker() -> None:
        await asyncio.sleep(0.01)
        ticked.set()

    async def consume() -> list[object]:
        with os.fdopen(writer.read_fd, "rb") as pipe, open_rows("-", "jsonl", stdin=pipe) as source:
            threading.Thread(target=gated, daemon=True).start()
            tick = asyncio.create_task(ticker())
            rows = [row.data async for row in source.aiter()]
            await tick
            return rows

    assert asyncio.run(consume()) == [{"id": 1}]
    assert timed_out == [False]


@pytest.mark.timeout(30)
def test_aiter_on_a_pipe_reads_ahead_at_most_max_buffered_rows():
    # Each line is bigger than the pipe's buffer (64 KiB), so the writer can only get ahead of
    # the reader thread by about one line: what it managed to write shows how far the reader
    # read ahead while the consumer was paused.
    pad = "x" * 70_000
    count, limit = 40, 4
    writer = PipeWriter([json.dumps({"i": i, "pad": pad}).encode() + b"\n" for i in range(count)])

    async def consume() -> tuple[int, int, bool, list[int], int]:
        writer.thread.start()
        with os.fdopen(writer.read_fd, "rb") as pipe, open_rows("-", "jsonl", stdin=pipe) as source:
            rows = source.aiter(max_buffered=limit)
            first = await anext(rows)
            received = [first.data["i"]]
            # Paused: let the reader thread fill its buffer and stall.
            for _ in range(1000):
                if source.buffered == limit:
                    break
                await asyncio.sleep(0.005)
            await asyncio.sleep(0.2)
            written_while_paused = writer.written
            buffered_while_paused = source.buffered
            finished_while_paused = writer.finished.is_set()
            most_buffered = 0
            async for row in rows:
                received.append(row.data["i"])
                most_buffered = max(most_buffered, source.buffered)
            return (
                written_while_paused,
                buffered_while_paused,
                finished_while_paused,
                received,
                most_buffered,
            )

    written, buffered, finished, received, most_buffered = asyncio.run(
        asyncio.wait_for(consume(), 30)
    )
    assert buffered == limit
    assert not finished
    # The reader thread has read at most: the batch the consumer took (up to `limit` rows, the
    # first of them delivered), the buffer (`limit`), and one row in its hand, blocked; the
    # pipe and the reader's 8 KiB buffer hold less than two lines, so at most one more line
    # is fully written. Without the bound, all 40 would be written by now.
    assert limit + 1 <= written <= 2 * limit + 2
    assert most_buffered <= limit
    assert received == list(range(count))


@pytest.mark.timeout(30)
def test_leaving_aiter_early_stops_the_reader_thread():
    writer = PipeWriter([b'{"id": %d}\n' % i for i in range(100)])

    async def consume() -> threading.Thread:
        writer.thread.start()
        with os.fdopen(writer.read_fd, "rb") as pipe, open_rows("-", "jsonl", stdin=pipe) as source:
            rows = source.aiter(max_buffered=2)
            async for row in rows:
                assert row.data == {"id": 0}
                break
            await rows.aclose()
            assert source._pump is not None
            return source._pump._thread

    thread = asyncio.run(asyncio.wait_for(consume(), 10))
    thread.join(5)
    assert not thread.is_alive()


def test_aiter_reports_read_errors_as_input_errors():
    class Broken(io.BytesIO):
        def readline(self, size: int | None = -1) -> bytes:
            if self.tell() > 0:
                raise OSError(5, "Input/output error")
            return super().readline(size)

    async def consume() -> list[object]:
        source = open_rows("-", "jsonl", stdin=Broken(b'{"id": 1}\n{"id": 2}\n'))
        return [row.data async for row in source.aiter()]

    with pytest.raises(InputError, match=r"<stdin>: read failed after line 1 \(Input/output"):
        asyncio.run(consume())
