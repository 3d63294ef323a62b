"""``paceline.runners.commands`` (behind ``paceline exec``): real subprocesses, on every path."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from paceline.runners import commands as exec_op
from paceline.runners._guardian import GUARDIAN
from paceline.runners.commands import (
    CommandFailed,
    CommandNotFound,
    CommandTimedOut,
    check_program,
    describe_exit,
    run_command,
)
from tests._procs import read_pid, state, wait_dead

# fast: posix_spawn + pidfd (Linux); popen: subprocess.Popen + pidfd (the cwd path);
# thread: posix_spawn + a waiter thread; fallback: Popen + waiter thread (no pidfd anywhere).
MODES = ["fast", "popen", "thread", "fallback"]


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    name: str = request.param
    if name in ("popen", "fallback"):
        monkeypatch.setattr(exec_op, "_USE_POSIX_SPAWN", False)
    if name in ("thread", "fallback"):
        monkeypatch.setattr(exec_op, "_have_pidfd", False)
    elif not exec_op._pidfd_supported():
        pytest.skip("no pidfd here")
    return name


def run(coro):
    return asyncio.run(coro)


def _resource_tracker_pid() -> int | None:
    """The pid of multiprocessing's resource tracker, if this process started one: Python's own
    helper, started once by the first ``multiprocessing`` user (an in-process ``LocalCluster``
    of the Dask tests run earlier in this pytest process) and kept until this process exits."""
    from multiprocessing import resource_tracker

    return getattr(getattr(resource_tracker, "_resource_tracker", None), "_pid", None)


def children() -> set[int]:
    """Our child processes (zombies included), from /proc; not the guardian (see below), nor
    multiprocessing's resource tracker (not paceline's: see ``_resource_tracker_pid``)."""
    found: set[int] = set()
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        with contextlib.suppress(OSError):
            found.update(int(p) for p in (task / "children").read_text().split())
    return found - {GUARDIAN.pid, _resource_tracker_pid()}


# -- success and failure -------------------------------------------------------------------


def test_exit_0_captures_stdout_and_stderr(mode):
    result = run(run_command(["sh", "-c", "printf out; printf err >&2"]))
    assert result == {"exit_code": 0, "stdout": "out", "stderr": "err"}


def test_nonzero_exit_raises_command_failed(mode):
    with pytest.raises(CommandFailed) as info:
        run(
            run_command(
                ["sh", "-c", "echo partial; echo first >&2; echo '  last words ' >&2; exit 3"]
            )
        )
    error = info.value
    assert error.exit_code == 3
    assert str(error) == "exit code 3: last words"
    assert error.stdout == "partial\n"
    assert error.stderr == "first\n  last words \n"
    assert error.retryable is False


def test_failure_without_stderr_message_is_just_the_code():
    with pytest.raises(CommandFailed, match=r"^exit code 1$"):
        run(run_command(["false"]))


def test_long_stderr_line_trimmed_in_message():
    with pytest.raises(CommandFailed) as info:
        run(run_command(["sh", "-c", "printf '%0300d\\n' 0 >&2; exit 2"]))
    message = str(info.value)
    assert message.startswith("exit code 2: 000")
    assert len(message) == len("exit code 2: ") + 200
    assert message.endswith("...")


def test_killed_by_signal(mode):
    with pytest.raises(CommandFailed) as info:
        run(run_command("kill -KILL $$", shell=True))
    assert info.value.exit_code == -signal.SIGKILL
    assert str(info.value) == "exit code -9 (killed by SIGKILL)"
    with pytest.raises(CommandFailed, match=r"^exit code -15 \(killed by SIGTERM\)$"):
        run(run_command("kill -TERM $$", shell=True))


def test_describe_exit_unknown_signal():
    assert describe_exit(-200) == "exit code -200 (killed by signal 200)"


def test_command_failed_pickles():
    error = CommandFailed(4, "o", "e\nwhy\n")
    again = pickle.loads(pickle.dumps(error))
    assert (again.exit_code, again.stdout, again.stderr, str(again)) == (
        4,
        "o",
        "e\nwhy\n",
        str(error),
    )
    timed = pickle.loads(pickle.dumps(CommandTimedOut(1.5, "a", "b")))
    assert (timed.timeout_s, timed.stdout, timed.stderr, str(timed)) == (
        1.5,
        "a",
        "b",
        "timed out after 1.5 s (killed)",
    )
    missing = pickle.loads(pickle.dumps(CommandNotFound("nope")))
    assert str(missing) == str(CommandNotFound("nope"))


# -- not found -----------------------------------------------------------------------------


def test_program_not_found(mode):
    with pytest.raises(CommandNotFound) as info:
        run(run_command(["no-such-program-xyz", "arg"]))
    assert "'no-such-program-xyz'" in str(info.value)
    assert "PATH" in str(info.value)
    assert info.value.program == "no-such-program-xyz"
    assert children() == set()


def test_path_not_found_and_not_executable(tmp_path, mode):
    with pytest.raises(CommandNotFound, match="no such file"):
        run(run_command([str(tmp_path / "missing")]))
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    with pytest.raises(CommandNotFound, match=r"chmod \+x"):
        run(run_command([str(script)]))
    script.chmod(0o755)
    assert run(run_command([str(script)]))["stdout"] == "hi\n"
    bare = tmp_path / "bare"
    bare.write_text("echo hi\n")
    bare.chmod(0o755)
    with pytest.raises(CommandNotFound, match="'#!' line"):
        run(run_command([str(bare)]))


def test_command_line_without_shell_hints_at_shell():
    with pytest.raises(CommandNotFound, match="--shell"):
        run(run_command("echo hi"))


def test_check_program(tmp_path):
    check_program("sh")
    check_program("/bin/sh")
    with pytest.raises(CommandNotFound, match="no-such-program-xyz"):
        check_program("no-such-program-xyz")
    with pytest.raises(CommandNotFound, match="no such file"):
        check_program(str(tmp_path / "missing"))
    with pytest.raises(CommandNotFound, match="chmod"):
        check_program(str(tmp_path))
    with pytest.raises(CommandNotFound):
        check_program("")


def test_empty_command_and_bad_arguments():
    with pytest.raises(ValueError, match="empty command"):
        run(run_command([]))
    with pytest.raises(ValueError, match="timeout_s"):
        run(run_command(["true"], timeout_s=0))
    with pytest.raises(ValueError, match="capture_limit_bytes"):
        run(run_command(["true"], capture_limit_bytes=-1))


# -- shell or not --------------------------------------------------------------------------


def test_shell_runs_through_sh(mode):
    assert run(run_command("echo $((1+2))", shell=True))["stdout"] == "3\n"
    # a sequence with shell=True: the line, then $0, $1, ... (as subprocess does)
    assert run(run_command(["echo $1", "sh", "a b"], shell=True))["stdout"] == "a b\n"


def test_no_shell_passes_arguments_literally(mode):
    argv = ["printf", "[%s]\\n", "$HOME", "a b  c", "", "*", "'q'", "$(echo x)"]
    result = run(run_command(argv))
    assert result["stdout"] == "[$HOME]\n[a b  c]\n[]\n[*]\n['q']\n[$(echo x)]\n"


def test_utf8_decoding_with_replacement():
    result = run(run_command(["printf", "caf\\303\\251 \\377"]))
    assert result["stdout"] == "café \ufffd"


# -- output limits -------------------------------------------------------------------------


def test_output_over_the_limit_is_truncated_with_a_marker(mode):
    script = "head -c 100000 /dev/zero | tr '\\0' a; head -c 5000 /dev/zero | tr '\\0' b >&2"
    result = run(run_command(script, shell=True, capture_limit_bytes=1000))
    assert (
        result["stdout"]
        == "a" * 1000 + "\n[paceline: 99000 more bytes not captured (limit 1000 bytes)]"
    )
    assert result["stderr"].startswith("b" * 1000 + "\n[paceline: 4000 more bytes not captured")


def test_under_the_limit_no_marker():
    result = run(run_command(["printf", "%s", "x" * 1000], capture_limit_bytes=1000))
    assert result["stdout"] == "x" * 1000


def test_truncated_stderr_message_quotes_the_real_last_line():
    script = "head -c 200000 /dev/zero | tr '\\0' e >&2; echo >&2; echo 'disk full' >&2; exit 5"
    with pytest.raises(CommandFailed) as info:
        run(run_command(script, shell=True, capture_limit_bytes=100))
    assert str(info.value) == "exit code 5: disk full"
    assert info.value.stderr.startswith("e" * 100 + "\n[paceline: ")


def test_zero_limit_keeps_nothing():
    result = run(run_command(["echo", "hi"], capture_limit_bytes=0))
    assert result["stdout"] == "\n[paceline: 3 more bytes not captured (limit 0 bytes)]"


# -- stdin, env, cwd -----------------------------------------------------------------------


def test_stdin_is_empty_by_default():
    assert run(run_command(["cat"]))["stdout"] == ""


def test_stdin_data(mode):
    assert run(run_command(["cat"], stdin_data=b"hello\n"))["stdout"] == "hello\n"
    big = b"x" * (1 << 20)  # more than a pipe holds: written as the child reads
    assert run(run_command(["wc", "-c"], stdin_data=big))["stdout"].strip() == str(len(big))


def test_stdin_data_the_child_does_not_read():
    result = run(run_command(["true"], stdin_data=b"y" * (1 << 20)))
    assert result["exit_code"] == 0


def test_env_replaces_the_environment(mode):
    env = {"PATH": os.environ["PATH"], "PACELINE_X": "v a l"}
    result = run(run_command(["sh", "-c", 'echo "$PACELINE_X|${HOME-unset}"'], env=env))
    assert result["stdout"] == "v a l|unset\n"


def test_env_path_is_searched(tmp_path):
    prog = tmp_path / "only-here"
    prog.write_text("#!/bin/sh\necho found\n")
    prog.chmod(0o755)
    env = {"PATH": f"{tmp_path}:{os.environ['PATH']}"}
    assert run(run_command(["only-here"], env=env))["stdout"] == "found\n"
    with pytest.raises(CommandNotFound):
        run(run_command(["only-here"]))


def test_changes_to_os_environ_are_seen(monkeypatch):
    script = ["sh", "-c", "echo ${PACELINE_T-unset}"]
    monkeypatch.setenv("PACELINE_T", "one")
    assert run(run_command(script))["stdout"] == "one\n"
    monkeypatch.setenv("PACELINE_T", "two")
    assert run(run_command(script))["stdout"] == "two\n"
    monkeypatch.delenv("PACELINE_T")
    assert run(run_command(script))["stdout"] == "unset\n"


def test_cwd(tmp_path):
    assert run(run_command(["pwd"], cwd=str(tmp_path)))["stdout"] == f"{tmp_path}\n"
    with pytest.raises(FileNotFoundError):
        run(run_command(["pwd"], cwd=str(tmp_path / "missing")))


def test_child_gets_default_sigpipe():
    # Python ignores SIGPIPE; the child must not inherit that (yes would spin on EPIPE).
    result = run(run_command("yes | head -n 2", shell=True, timeout_s=10))
    assert result["stdout"] == "y\ny\n"


def test_child_runs_in_its_own_session():
    result = run(run_command(["sh", "-c", "ps -o sid= -p $$ 2>/dev/null || echo none; echo $$"]))
    sid, pid = result["stdout"].split()
    assert sid in (pid, "none")


# -- timeout and cancellation --------------------------------------------------------------


def test_timeout_kills_the_child_and_a_grandchild(tmp_path, mode):
    pidfile = tmp_path / "grandchild.pid"
    script = f"sleep 30 & echo $! > {pidfile}; echo started; wait"
    start = time.monotonic()
    with pytest.raises(CommandTimedOut) as info:
        run(run_command(script, shell=True, timeout_s=0.3))
    assert time.monotonic() - start < 5
    assert isinstance(info.value, TimeoutError)
    assert info.value.stdout == "started\n"
    assert str(info.value) == "timed out after 0.3 s (killed)"
    grandchild = read_pid(pidfile)
    assert wait_dead(grandchild) in (None, "Z")
    assert children() == set()


def test_timeout_not_hit():
    assert run(run_command(["true"], timeout_s=5))["exit_code"] == 0


def test_timeout_when_a_grandchild_holds_the_pipes(tmp_path):
    # The child exits at once; its background grandchild keeps stdout open.
    pidfile = tmp_path / "grandchild.pid"
    with pytest.raises(CommandTimedOut):
        run(run_command(f"sleep 30 & echo $! > {pidfile}", shell=True, timeout_s=0.3))
    assert wait_dead(read_pid(pidfile)) in (None, "Z")


def test_cancellation_kills_and_reaps_the_child(tmp_path, mode):
    pidfile = tmp_path / "child.pid"

    async def main() -> int:
        task = asyncio.create_task(run_command(f"echo $$ > {pidfile}; exec sleep 30", shell=True))
        while not pidfile.exists() or not pidfile.read_text().endswith("\n"):
            await asyncio.sleep(0.005)
        pid = int(pidfile.read_text())
        assert state(pid) not in (None, "Z")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return pid

    start = time.monotonic()
    pid = run(main())
    assert time.monotonic() - start < 5
    with pytest.raises(ChildProcessError):  # already reaped: not a zombie of ours
        os.waitpid(pid, os.WNOHANG)
    assert state(pid) is None
    assert children() == set()


def test_cancellation_kills_a_shells_grandchild(tmp_path):
    pidfile = tmp_path / "grandchild.pid"

    async def main() -> None:
        task = asyncio.create_task(run_command(f"sleep 30 & echo $! > {pidfile}; wait", shell=True))
        read = asyncio.get_running_loop().run_in_executor(None, read_pid, pidfile)
        await read
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(main())
    assert wait_dead(read_pid(pidfile)) in (None, "Z")
    assert children() == set()


def test_wait_for_timeout_cancels_cleanly():
    async def main() -> None:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(run_command(["sleep", "30"]), 0.2)

    run(main())
    assert children() == set()


def wait_no_children(within_s: float = 5.0) -> set[int]:
    deadline = time.monotonic() + within_s
    while children() and time.monotonic() < deadline:
        time.sleep(0.02)
    return children()


def test_cancelled_again_while_killing_still_reaps(mode):
    async def main() -> None:
        task = asyncio.create_task(run_command(["sleep", "30"]))
        await asyncio.sleep(0.1)
        task.cancel()
        await asyncio.sleep(0)  # the task is in abort(), waiting for the child to die
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(main())
    assert wait_no_children() == set()


@pytest.mark.parametrize("mode", ["fast", "fallback"], indirect=True)
def test_child_that_will_not_die_is_reaped_later(monkeypatch, mode):
    # Simulate a child that outlives SIGKILL (uninterruptible sleep): the timeout still
    # returns after the grace period, and a thread reaps the child when it ends.
    monkeypatch.setattr(exec_op, "_REAP_GRACE_S", 0.05)

    def kill_nothing(self: exec_op._Child) -> None:
        self.killed = True

    monkeypatch.setattr(exec_op._Child, "kill", kill_nothing)
    start = time.monotonic()
    with pytest.raises(CommandTimedOut):
        run(run_command(["sleep", "0.6"], timeout_s=0.1))
    assert time.monotonic() - start < 0.5
    assert children()  # still running
    assert wait_no_children() == set()


# -- many at once --------------------------------------------------------------------------


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("mode", ["fast", "fallback"], indirect=True)
def test_200_concurrent_runs_16_in_flight(mode):
    async def main() -> tuple[int, int, list[dict[str, object]]]:
        await run_command(["true"])  # opens the shared /dev/null once
        before = fd_count()
        gate = asyncio.Semaphore(16)

        async def one(i: int) -> dict[str, object]:
            async with gate:
                return await run_command(["sh", "-c", f"echo {i}; echo e{i} >&2"])

        results = await asyncio.gather(*(one(i) for i in range(200)))
        return before, fd_count(), results

    before, after, results = run(main())
    assert [r["stdout"] for r in results] == [f"{i}\n" for i in range(200)]
    assert [r["stderr"] for r in results] == [f"e{i}\n" for i in range(200)]
    assert after == before
    assert children() == set()


def test_mixed_outcomes_concurrently():
    async def main() -> tuple[int, int, list[object]]:
        await run_command(["true"])  # opens the shared /dev/null once
        before = fd_count()
        commands = [["true"], ["false"], ["no-such-program-xyz"], ["sh", "-c", "kill $$"]] * 10
        found = await asyncio.gather(*(run_command(c) for c in commands), return_exceptions=True)
        return before, fd_count(), found

    before, after, results = run(main())
    assert after == before
    kinds = [type(r).__name__ if isinstance(r, BaseException) else "ok" for r in results]
    assert kinds == ["ok", "CommandFailed", "CommandNotFound", "CommandFailed"] * 10
    assert children() == set()


def test_works_outside_the_main_thread():
    import threading

    found: list[object] = []
    thread = threading.Thread(target=lambda: found.append(run(run_command(["echo", "t"]))))
    thread.start()
    thread.join(10)
    assert found == [{"exit_code": 0, "stdout": "t\n", "stderr": ""}]


@pytest.mark.skipif(sys.platform != "linux", reason="pidfd is Linux-only")
def test_pidfd_path_is_used_on_linux():
    assert exec_op._pidfd_supported()
    assert exec_op._USE_POSIX_SPAWN


# -- children die with paceline ------------------------------------------------------------


def test_kill_9_of_paceline_kills_its_children_and_their_children(tmp_path):
    (tmp_path / "t.csv").write_text("n\n1\n2\n")
    script = (
        f"echo $$ > {tmp_path}/child-{{n}}.pid; "
        f"sleep 60 & echo $! > {tmp_path}/grand-{{n}}.pid; wait"
    )
    paceline = subprocess.Popen(
        [sys.executable, "-m", "paceline", "exec", "t.csv", "-j", "2", "--journal", "none",
         "--", "sh", "-c", script],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    pids: list[int] = []
    try:
        for kind in ("child", "grand"):
            pids += [read_pid(tmp_path / f"{kind}-{n}.pid", within_s=60) for n in (1, 2)]
        assert [state(pid) in (None, "Z") for pid in pids] == [False] * 4  # all running
    finally:
        paceline.kill()  # SIGKILL: paceline cleans nothing up itself
        paceline.wait(30)
    try:
        assert [wait_dead(pid, within_s=10) in (None, "Z") for pid in pids] == [True] * 4
    finally:
        for pid in pids:  # never leave them behind, even when the test fails
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def test_the_guardian_forgets_reaped_children_and_ends_with_its_process(tmp_path):
    code = (
        "import asyncio; from paceline.runners.commands import run_command; "
        "from paceline.runners._guardian import GUARDIAN; "
        "asyncio.run(run_command(['true'])); print(GUARDIAN.pid, flush=True)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    guardian = int(done.stdout)
    assert guardian > 0
    assert wait_dead(guardian, within_s=10) in (None, "Z")
