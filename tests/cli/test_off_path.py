"""The CLI off the happy path: files that must not be erased, a journal in use, full and
read-only disks, closed pipes, damaged journals — each one line and a documented exit code,
nothing lost (the installed ``paceline``, run as a subprocess against the test API)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from paceline.cli.run import COMMIT_ROWS
from paceline.stores.view import JournalView
from paceline.testing.api_server import ApiConfig, ApiServer

PACELINE = str(Path(sys.executable).with_name("paceline"))
TIMEOUT_S = 120
HTTP = [PACELINE, "http", "in.jsonl"]


def paceline(
    *args: str, cwd: Path, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PACELINE, *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
        env=env,
    )


def write_requests(path: Path, count: int, base: str, *, pad: int = 0) -> None:
    with path.open("w") as handle:
        for n in range(count):
            row = {"id": f"item-{n}" + "-" * pad, "url": f"{base}/items/{n}"}
            handle.write(json.dumps(row) + "\n")


def counts(journal: Path) -> dict[str, int]:
    with JournalView.open(journal) as view:
        return view.counts()


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


# -- 9: --out / --html never erase the input or the journal --------------------------------


@pytest.mark.parametrize("flag", ["--out", "--html"])
def test_an_output_naming_the_input_is_refused_and_the_input_kept(
    tmp_path: Path, flag: str
) -> None:
    write_requests(tmp_path / "in.jsonl", 5, "http://127.0.0.1:9")
    before = (tmp_path / "in.jsonl").read_bytes()
    done = paceline("http", "in.jsonl", flag, "./in.jsonl", "--journal", "j.journal", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    line = one_line(done.stderr)
    assert flag in line
    assert "in.jsonl" in line
    assert "input" in line
    assert (tmp_path / "in.jsonl").read_bytes() == before


def test_an_output_naming_the_input_through_a_hard_link_is_refused(tmp_path: Path) -> None:
    write_requests(tmp_path / "in.jsonl", 5, "http://127.0.0.1:9")
    os.link(tmp_path / "in.jsonl", tmp_path / "alias.jsonl")
    before = (tmp_path / "in.jsonl").read_bytes()
    done = paceline("http", "in.jsonl", "--out", "alias.jsonl", "--journal", "none", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "alias.jsonl" in one_line(done.stderr)
    assert (tmp_path / "in.jsonl").read_bytes() == before


@pytest.mark.parametrize("flag", ["--out", "--html"])
def test_an_output_naming_the_journal_is_refused_and_the_journal_kept(
    tmp_path: Path, flag: str
) -> None:
    with ApiServer(ApiConfig(base_latency_s=0.001)) as server:
        write_requests(tmp_path / "in.jsonl", 5, server.url)
        first = paceline("http", "in.jsonl", "--journal", "j.journal", "-q", cwd=tmp_path)
        assert first.returncode == 0, first.stderr
        again = paceline(
            "http", "in.jsonl", "--journal", "j.journal", flag, "j.journal", cwd=tmp_path
        )
    assert again.returncode == 2, again.stderr
    line = one_line(again.stderr)
    assert flag in line
    assert "journal" in line
    assert counts(tmp_path / "j.journal") == {"succeeded": 5, "failed": 0}


def test_report_html_naming_its_journal_is_refused(tmp_path: Path) -> None:
    with ApiServer(ApiConfig(base_latency_s=0.001)) as server:
        write_requests(tmp_path / "in.jsonl", 3, server.url)
        assert paceline("http", "in.jsonl", "--journal", "j", "-q", cwd=tmp_path).returncode == 0
    done = paceline("report", "j", "--html", "j", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "--html" in one_line(done.stderr)
    assert counts(tmp_path / "j") == {"succeeded": 3, "failed": 0}


def test_out_and_html_files_are_owner_only(tmp_path: Path) -> None:
    (tmp_path / "old.jsonl").write_text("from before\n")
    (tmp_path / "old.jsonl").chmod(0o644)
    with ApiServer(ApiConfig(base_latency_s=0.001)) as server:
        write_requests(tmp_path / "in.jsonl", 3, server.url)
        done = paceline(
            "http", "in.jsonl", "--journal", "j", "-q", "--out", "old.jsonl",
            "--html", "r.html", cwd=tmp_path,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "old.jsonl").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "r.html").stat().st_mode & 0o777 == 0o600
    assert len((tmp_path / "old.jsonl").read_text().splitlines()) == 3
    assert not list(tmp_path.glob(".r.html*"))  # the temporary file was renamed into place


# -- 8: --fresh never deletes a journal another run is writing -----------------------------


def test_fresh_refuses_a_journal_another_run_is_writing(tmp_path: Path) -> None:
    items = 20
    with ApiServer(ApiConfig(base_latency_s=0.001)) as server:
        rows = [
            json.dumps({"id": f"item-{n}", "url": f"{server.url}/items/{n}"}) for n in range(items)
        ]
        (tmp_path / "in.jsonl").write_text("\n".join(rows) + "\n")
        first = subprocess.Popen(  # reads stdin as it comes: open until its input ends
            [PACELINE, "http", "-", "-j", "2", "--journal", "j", "-q"],
            cwd=tmp_path,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert first.stdin is not None
        try:
            first.stdin.write("\n".join(rows[:5]) + "\n")
            first.stdin.flush()
            deadline = time.monotonic() + 60
            while server.stats()["accepted"] < 5 and time.monotonic() < deadline:
                time.sleep(0.05)
            second = paceline("http", "-", "--journal", "j", "--fresh", "-q", cwd=tmp_path,
                              stdin="\n".join(rows) + "\n")  # fmt: skip
            _, first_err = first.communicate("\n".join(rows[5:]) + "\n", timeout=TIMEOUT_S)
        finally:
            if first.poll() is None:
                first.kill()
        stats = server.stats()
    assert second.returncode == 2, second.stderr
    line = one_line(second.stderr)
    assert "in use" in line
    assert "j" in line
    assert first.returncode == 0, first_err
    assert stats["items_served_more_than_once"] == 0
    assert counts(tmp_path / "j") == {"succeeded": items, "failed": 0}


def test_fresh_starts_over_when_no_run_holds_the_journal(tmp_path: Path) -> None:
    with ApiServer(ApiConfig(base_latency_s=0.001)) as server:
        write_requests(tmp_path / "in.jsonl", 4, server.url)
        assert paceline("http", "in.jsonl", "--journal", "j", "-q", cwd=tmp_path).returncode == 0
        again = paceline("http", "in.jsonl", "--journal", "j", "--fresh", "-q", cwd=tmp_path)
        stats = server.stats()
    assert again.returncode == 0, again.stderr
    assert stats["accepted"] == 8  # every item ran again


# -- 14 ----------------------------------------------------------------------------------------


def test_serve_test_help_shows_the_servers_options(tmp_path: Path) -> None:
    done = paceline("serve-test", "--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    # the options the command's own summary does not name: only the server's help has them
    for option in ("--base-latency-s", "--drop-rate", "--slow-rate", "--network-delay-s"):
        assert option in done.stdout


# -- 10: one line and exit 2, never a traceback ----------------------------------------------


def test_a_burst_above_the_rate_count_is_one_line(tmp_path: Path) -> None:
    write_requests(tmp_path / "in.jsonl", 3, "http://127.0.0.1:9")
    done = paceline(
        "http", "in.jsonl", "--rate", "5/s", "--burst", "10", "--journal", "none", cwd=tmp_path
    )
    assert done.returncode == 2, done.stderr
    line = one_line(done.stderr)
    assert "--burst 10" in line
    assert "5/" in line


def test_a_closed_stdin_is_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        ["sh", "-c", f'exec "{PACELINE}" http - --journal none <&-'],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "stdin" in one_line(done.stderr)


def test_a_damaged_stored_row_is_one_line_naming_the_item(tmp_path: Path) -> None:
    with ApiServer(ApiConfig(base_latency_s=0.001)) as server:
        write_requests(tmp_path / "in.jsonl", 6, server.url)
        first = paceline("http", "in.jsonl", "--journal", "j", "-q", cwd=tmp_path)
        assert first.returncode == 0, first.stderr
        with contextlib.closing(sqlite3.connect(tmp_path / "j")) as conn:
            key = conn.execute("SELECT key FROM items WHERE seq = 3").fetchone()[0]
            conn.execute("UPDATE items SET result = '{broken' WHERE seq = 3")
            conn.commit()
        again = paceline("http", "in.jsonl", "--journal", "j", "-q", cwd=tmp_path)
    assert again.returncode == 2, again.stderr
    line = one_line(again.stderr)
    assert key in line
    assert "--fresh" in line


def _run_as_root() -> bool:
    return os.geteuid() == 0


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[None]:
    """Make ``path`` (a file or a directory) really read-only, also for root: the immutable
    attribute where the filesystem has it, else a read-only bind mount, else (not root) the
    permission bits."""
    if not _run_as_root():
        mode = path.stat().st_mode
        path.chmod(0o500 if path.is_dir() else 0o400)
        try:
            yield
        finally:
            path.chmod(mode)
        return
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode == 0:
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(path)], check=True)
        return
    subprocess.run(["mount", "--bind", str(path), str(path)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(path)], check=True)
        yield
    finally:
        subprocess.run(["umount", str(path)], check=True)


def test_a_new_journal_in_a_read_only_directory_is_one_line(tmp_path: Path) -> None:
    write_requests(tmp_path / "in.jsonl", 3, "http://127.0.0.1:9")
    locked = tmp_path / "locked"
    locked.mkdir()
    with read_only(locked):
        done = paceline("http", "in.jsonl", "--journal", str(locked / "j"), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    line = one_line(done.stderr)
    assert str(locked / "j") in line
    assert "--journal" in line


def test_a_read_only_journal_is_one_line_and_left_as_it_was(tmp_path: Path) -> None:
    with ApiServer(ApiConfig(base_latency_s=0.001)) as server:
        write_requests(tmp_path / "in.jsonl", 4, server.url)
        write_requests(tmp_path / "more.jsonl", 8, server.url)
        first = paceline("http", "in.jsonl", "--journal", "j", "-q", cwd=tmp_path)
        assert first.returncode == 0, first.stderr
        side_files = sorted(p.name for p in tmp_path.glob("j-*"))
        with read_only(tmp_path / "j"):
            again = paceline("http", "more.jsonl", "--journal", "j", "-q", cwd=tmp_path)
            assert sorted(p.name for p in tmp_path.glob("j-*")) == side_files
        stats = server.stats()
    assert again.returncode == 2, again.stderr
    line = one_line(again.stderr)
    assert "read-only" in line
    assert "j" in line
    assert stats["accepted"] == 4  # nothing was sent that could not be recorded


def test_a_side_file_left_read_only_is_made_writable_again(tmp_path: Path) -> None:
    from paceline.stores import Journal

    path = tmp_path / "j"
    Journal.open(path, fingerprint="f").close()
    shm = Path(f"{path}-shm")
    shm.write_bytes(b"")
    shm.chmod(0o400)  # what SQLite leaves after opening a 0400 journal read-only
    with Journal.open(path, fingerprint="f") as journal:
        journal.record("k", success=True, result=1)
        journal.flush()
        assert shm.stat().st_mode & 0o777 == 0o600  # (SQLite deletes it at the last close)


@contextlib.contextmanager
def small_disk(root: Path, size_kib: int) -> Iterator[tuple[Path, Callable[[], None] | None]]:
    """A directory on a filesystem of ``size_kib`` (a tmpfs: ENOSPC when full) and the
    ``preexec_fn`` the child needs; where mounting is not allowed, any directory and a
    ``preexec_fn`` that caps the child's file size (RLIMIT_FSIZE: EFBIG past it)."""
    where = root / "small"
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kib}k,mode=0700", "tmpfs", str(where)],
        capture_output=True,
    )
    if mounted.returncode == 0:
        try:
            yield where, None
        finally:
            subprocess.run(["umount", "-l", str(where)], check=True)
        return

    def cap_file_size() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (size_kib * 1024, size_kib * 1024))

    yield where, cap_file_size


def test_a_full_disk_mid_run_is_one_line_and_the_journal_resumes(tmp_path: Path) -> None:
    items = 1500
    with ApiServer(ApiConfig(base_latency_s=0.0)) as server:
        write_requests(tmp_path / "in.jsonl", items, server.url, pad=150)
        with small_disk(tmp_path, 160) as (where, preexec):
            full = subprocess.run(
                [PACELINE, "http", "in.jsonl", "-j", "8", "--journal", str(where / "j"), "-q"],
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=TIMEOUT_S,
                preexec_fn=preexec,
            )
            for name in ("j", "j-wal", "j-shm"):  # to a disk with room, the three together
                if (where / name).exists():
                    shutil.copy2(where / name, tmp_path / name)
        kept = counts(tmp_path / "j")
        resumed = paceline("resume", "j", "-q", cwd=tmp_path)
        stats = server.stats()
    assert full.returncode == 2, full.stderr
    line = one_line(full.stderr)
    assert "paceline resume" in line
    assert str(where / "j") in line
    assert 0 < kept["succeeded"] < items
    assert resumed.returncode == 0, resumed.stderr
    assert counts(tmp_path / "j") == {"succeeded": items, "failed": 0}
    assert stats["accepted"] - items <= 8 + COMMIT_ROWS  # in flight + one commit batch ran twice


def test_a_journal_in_a_missing_directory_elsewhere_is_refused(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    write_requests(work / "in.jsonl", 3, "http://127.0.0.1:9")
    elsewhere = tmp_path / "typo" / "deeper"
    done = paceline("http", "in.jsonl", "--journal", str(elsewhere / "j"), cwd=work)
    assert done.returncode == 2, done.stderr
    line = one_line(done.stderr)
    assert f"mkdir -p {elsewhere}" in line
    assert not (tmp_path / "typo").exists()


def test_a_journal_in_a_missing_directory_under_the_working_one_is_made(tmp_path: Path) -> None:
    with ApiServer(ApiConfig(base_latency_s=0.001)) as server:
        write_requests(tmp_path / "in.jsonl", 3, server.url)
        done = paceline("http", "in.jsonl", "--journal", "runs/today/j", "-q", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert counts(tmp_path / "runs" / "today" / "j") == {"succeeded": 3, "failed": 0}


def test_an_out_file_on_a_full_disk_is_one_line_and_the_journal_keeps_every_outcome(
    tmp_path: Path,
) -> None:
    items = 400
    with ApiServer(ApiConfig(base_latency_s=0.0)) as server:
        write_requests(tmp_path / "in.jsonl", items, server.url)
        with small_disk(tmp_path, 64) as (where, preexec):
            full = subprocess.run(
                [
                    PACELINE,
                    "http",
                    "in.jsonl",
                    "-j",
                    "4",
                    "--journal",
                    "j",
                    "-q",
                    "--out",
                    str(where / "out.jsonl"),
                ],
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=TIMEOUT_S,
                preexec_fn=preexec,
            )
        resumed = paceline("resume", "j", "-q", "--out", "again.jsonl", cwd=tmp_path)
        stats = server.stats()
    assert full.returncode == 2, full.stderr
    line = one_line(full.stderr)
    assert "--out" in line
    assert "paceline resume j" in line
    assert resumed.returncode == 0, resumed.stderr
    assert len((tmp_path / "again.jsonl").read_text().splitlines()) == items
    assert stats["items_served_more_than_once"] == 0
