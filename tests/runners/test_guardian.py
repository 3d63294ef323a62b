"""The guardian that kills ``exec`` children when paceline dies (runners/_guardian.py)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from paceline.runners._guardian import Guardian
from tests._procs import read_pid, state, wait_dead


def test_groups_watched_from_threads_while_the_guardian_starts_are_all_guarded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Seen under load (kill -9 of `paceline exec -j 2`): the second child's group was told to
    # nobody, because its thread found the guardian owned but its pipe not yet made, and so
    # survived paceline. A slow start makes that window wide.
    real_spawn = os.posix_spawn

    def slow_spawn(*args: object, **kwargs: object) -> int:
        time.sleep(0.2)
        return real_spawn(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "posix_spawn", slow_spawn)
    told: list[bytes] = []
    real_send = Guardian._send

    def send(self: Guardian, line: bytes) -> None:
        told.append(line)
        real_send(self, line)

    monkeypatch.setattr(Guardian, "_send", send)
    guardian = Guardian()
    groups = [900_001 + n for n in range(4)]  # told, then forgotten: nothing is ever killed
    threads = [threading.Thread(target=guardian.watch, args=(group,)) for group in groups]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    try:
        assert sorted(told) == [b"+%d\n" % group for group in groups]
    finally:
        for group in groups:
            guardian.forget(group)
        if guardian._fd >= 0:
            os.close(guardian._fd)  # the guardian reads EOF and exits
            os.waitpid(guardian.pid, 0)


@pytest.mark.skipif(sys.platform != "linux", reason="finds pipes' holders in /proc")
def test_kill_9_between_the_spawn_and_the_watch_still_kills_the_child_and_its_children(
    tmp_path: Path,
) -> None:
    # Seen under load (the kill -9 test failed in 11 of 20 runs next to four CPU-bound loops):
    # the child ran and started its own child before paceline, waiting for a CPU, told the
    # guardian its pid. Here paceline never tells it: only the pipes named before the spawn
    # lead the guardian to the child.
    code = (
        "import asyncio, time\n"
        "from paceline.runners import _guardian\n"
        "_guardian.Guardian.watch = lambda self, pgid, expected=b'': time.sleep(600)\n"
        "from paceline.runners.commands import run_command\n"
        f"asyncio.run(run_command('echo $$ > {tmp_path}/child.pid; "
        f"sleep 60 & echo $! > {tmp_path}/grand.pid; wait', shell=True))\n"
    )
    stalled = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.DEVNULL)
    pids: list[int] = []
    try:
        pids = [read_pid(tmp_path / f"{kind}.pid", within_s=60) for kind in ("child", "grand")]
        assert [state(pid) in (None, "Z") for pid in pids] == [False, False]  # both running
    finally:
        stalled.kill()
        stalled.wait(30)
    try:
        assert [wait_dead(pid, within_s=10) in (None, "Z") for pid in pids] == [True, True]
    finally:
        for pid in pids:  # never leave them behind, even when the test fails
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("cancelled", [False, True])
@pytest.mark.skipif(sys.platform != "linux", reason="finds pipes' holders in /proc")
def test_a_named_pipe_never_watched_is_killed_with_its_holder_unless_cancelled(
    cancelled: bool,
) -> None:
    guardian = Guardian()
    read_fd, write_fd = os.pipe()
    holder = subprocess.Popen(["sleep", "60"], stdout=write_fd, start_new_session=True)
    try:
        expected = guardian.expect(write_fd)
        assert expected == b" %d" % os.fstat(write_fd).st_ino
        if cancelled:
            guardian.cancel(expected)
        os.close(read_fd)  # only the holder keeps the pipe (this process would be killed)
        os.close(write_fd)
        os.close(guardian._fd)  # this process "dies": the guardian reads EOF
        os.waitpid(guardian.pid, 0)  # it has sent its kills once it exits
        if cancelled:
            assert holder.poll() is None
        else:  # a SIGKILL is sent, not yet delivered: the holder dies when next scheduled
            assert holder.wait(10) == -signal.SIGKILL
    finally:
        holder.kill()
        holder.wait(30)
