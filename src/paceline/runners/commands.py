"""Run one external command, capture its exit code and output, without blocking the event
loop: the operation behind ``paceline exec``, for library users too.

:func:`run_command` is called from up to ``-j N`` worker coroutines at once, so its cost per
command is the CLI's overhead per job. On Linux it starts the child with ``os.posix_spawn``
(vfork + exec: no copy of the parent, no scan of its fds), learns of the child's exit from a
pidfd (``os.pidfd_open``) watched by the event loop, and reads stdout/stderr from pipes
watched the same way: no thread, no ``SIGCHLD`` handler, no per-child watcher. Measured on a
2-core VM (2,000 ``true`` at 8 in flight), this costs the parent about 0.25 ms of CPU per
command, against about 0.6 ms for ``asyncio.create_subprocess_exec`` (which on Python 3.11
starts a waiter thread per child). Elsewhere (no pidfd, no ``posix_spawn``, or a ``cwd``)
it falls back to ``subprocess.Popen`` for the spawn and a waiter thread for the exit; the
results are the same.

Every child starts in a session of its own (``setsid``), so a timeout or a cancellation
kills its whole process group (a shell's children too) with ``SIGKILL``, and the child is
always reaped. Should paceline die without doing so (``kill -9``), a guardian process kills
the groups of the children still running (see ``runners/_guardian.py``). The child's
stdin is ``/dev/null`` unless ``stdin_data`` is given.

POSIX only (it needs ``loop.add_reader``, i.e. a selector event loop).

>>> import asyncio
>>> asyncio.run(run_command(["echo", "hello", "$HOME"]))
{'exit_code': 0, 'stdout': 'hello $HOME\\n', 'stderr': ''}
>>> asyncio.run(run_command("echo oops >&2; exit 3", shell=True))
Traceback (most recent call last):
...
paceline.runners.commands.CommandFailed: exit code 3: oops
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from paceline.errors import InvalidArgument, PacelineError
from paceline.runners._guardian import GUARDIAN

__all__ = [
    "DEFAULT_CAPTURE_LIMIT",
    "SHELL",
    "CommandFailed",
    "CommandNotFound",
    "CommandTimedOut",
    "check_program",
    "describe_exit",
    "run_command",
]

DEFAULT_CAPTURE_LIMIT = 64 * 1024
"""Bytes of stdout, and of stderr, kept per command by default."""

SHELL = "/bin/sh"
"""The shell of ``shell=True``."""

# Appended to a stream that went over the capture limit.
_TRUNCATED = "\n[paceline: {dropped} more bytes not captured (limit {limit} bytes)]"
# A failure's message quotes the last line of stderr, at most this long.
_DETAIL_CHARS = 200
# Past the capture limit, the end of stderr is still kept (for the message's last line).
_TAIL_BYTES = 1024
_READ_CHUNK = 64 * 1024
# After SIGKILL, how long a cancelled/timed-out call waits for the child to die before it
# hands the reaping to a thread (a child in uninterruptible sleep dies late).
_REAP_GRACE_S = 5.0
# Reset in the child, as subprocess's restore_signals=True does (Python ignores SIGPIPE).
_SIGDEF = tuple(
    getattr(signal, name) for name in ("SIGPIPE", "SIGXFZ", "SIGXFSZ") if hasattr(signal, name)
)


# -- errors --------------------------------------------------------------------------------


def describe_exit(exit_code: int) -> str:
    """``"exit code 3"``; for a child killed by signal N (``exit_code == -N``), with its name.

    >>> describe_exit(3), describe_exit(-9)
    ('exit code 3', 'exit code -9 (killed by SIGKILL)')
    """
    if exit_code >= 0:
        return f"exit code {exit_code}"
    try:
        name = signal.Signals(-exit_code).name
    except ValueError:
        name = f"signal {-exit_code}"
    return f"exit code {exit_code} (killed by {name})"


def _last_line(text: str) -> str:
    """The last non-blank line of ``text``, stripped and cut to ``_DETAIL_CHARS``."""
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line:
            if len(line) > _DETAIL_CHARS:
                line = line[: _DETAIL_CHARS - 3] + "..."
            return line
    return ""


class CommandFailed(PacelineError):
    """The command exited with a non-zero code, or was killed by a signal.

    ``exit_code`` is negative (-N) for a child killed by signal N, as in :mod:`subprocess`.
    ``stdout`` and ``stderr`` are what was captured (possibly truncated). The message is
    ``"exit code <n>: <last line of stderr>"`` (``"exit code -9 (killed by SIGKILL)"``), so
    that failures group by it. ``retryable`` is ``False``: a retry policy does not retry an
    exit code unless the caller says so (set it to ``True`` on the instance, or on a
    subclass, to let a policy retry).
    """

    retryable: bool = False

    def __init__(
        self, exit_code: int, stdout: str = "", stderr: str = "", detail: str | None = None
    ) -> None:
        self.exit_code = exit_code
        self.stdout = stdout
        self.stderr = stderr
        self.detail = _last_line(stderr) if detail is None else detail
        message = describe_exit(exit_code)
        super().__init__(f"{message}: {self.detail}" if self.detail else message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.exit_code, self.stdout, self.stderr, self.detail))


class CommandTimedOut(PacelineError, TimeoutError):
    """The command outlived ``timeout_s`` and was killed (its process group, with SIGKILL).

    A :class:`TimeoutError`, so timeouts are classified and retried as timeouts. ``stdout``
    and ``stderr`` hold what it wrote before it was killed.
    """

    def __init__(self, timeout_s: float, stdout: str = "", stderr: str = "") -> None:
        self.timeout_s = timeout_s
        self.stdout = stdout
        self.stderr = stderr
        super().__init__(f"timed out after {timeout_s:g} s (killed)")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.timeout_s, self.stdout, self.stderr))


class CommandNotFound(PacelineError):
    """The program does not exist, or cannot be executed. The message names it and the fix.

    >>> str(CommandNotFound("nosuchprog"))  # doctest: +ELLIPSIS
    "command not found: 'nosuchprog' (no such program on PATH; check the spelling, ..."
    """

    retryable = False
    error_code = "not_found"

    def __init__(self, program: str, errno_: int = errno.ENOENT) -> None:
        self.program = program
        self.errno = errno_
        if errno_ == errno.ENOENT:
            if "/" in program:
                message = f"command not found: {program!r} (no such file; check the path)"
            else:
                message = (
                    f"command not found: {program!r} (no such program on PATH; check the "
                    "spelling, install it, or give its full path)"
                )
            if any(c.isspace() for c in program.strip()):
                message += "; to run a shell command line, use --shell"
        elif errno_ == errno.ENOEXEC:
            message = (
                f"cannot execute {program!r}: not a binary and no '#!' line (start the script "
                "with e.g. #!/bin/sh, or run it with --shell)"
            )
        else:
            message = (
                f"cannot execute {program!r}: {os.strerror(errno_)} (make it executable with "
                "chmod +x, and check that it is a file)"
            )
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.program, self.errno))


def check_program(argv0: str, *, path: str | None = None) -> None:
    """Raise :class:`CommandNotFound` unless ``argv0`` names an executable file: a path (with
    a ``/``) as is, a bare name looked up on ``path`` (default: ``$PATH``).

    >>> check_program("sh")
    >>> check_program("no-such-program-here")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    paceline.runners.commands.CommandNotFound: command not found: 'no-such-program-here' (...
    """
    if "/" in argv0:
        if not os.path.exists(argv0):
            raise CommandNotFound(argv0, errno.ENOENT)
        if os.path.isdir(argv0) or not os.access(argv0, os.X_OK):
            raise CommandNotFound(argv0, errno.EACCES)
        return
    if not argv0 or shutil.which(argv0, path=path) is None:
        raise CommandNotFound(argv0, errno.ENOENT)


# -- platform support ----------------------------------------------------------------------

_devnull_fd = -1
_have_pidfd: bool | None = None  # None: not probed yet
_USE_POSIX_SPAWN = hasattr(os, "posix_spawn") and hasattr(os, "POSIX_SPAWN_DUP2")


def _devnull() -> int:
    """A read-only ``/dev/null`` fd (close-on-exec), opened once, for children's stdin."""
    global _devnull_fd
    if _devnull_fd < 0:
        _devnull_fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    return _devnull_fd


def _pidfd_supported() -> bool:
    """Whether ``os.pidfd_open`` works here (Linux >= 5.3, and not blocked by seccomp)."""
    global _have_pidfd
    if _have_pidfd is None:
        try:
            os.close(os.pidfd_open(os.getpid()))
        except (AttributeError, OSError):
            _have_pidfd = False
        else:
            _have_pidfd = True
    return _have_pidfd


def _reap_blocking(pid: int) -> None:
    """Wait for ``pid`` and reap it (on a daemon thread)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
    GUARDIAN.forget(pid)


def _close(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


# -- one child -----------------------------------------------------------------------------


class _Child:
    """One running command: its pid, its pipes, what it wrote, and how it ended.

    Everything runs on the event loop's thread except the waiter thread of the fallback.
    The child stays unreaped (a zombie) until :meth:`close`, so its pid, and so its process
    group id, cannot be reused while a kill may still target the group.
    """

    __slots__ = (
        "_dropped",
        "_exit_fd",
        "_popen",
        "_stdin_view",
        "_tail",
        "_writing",
        "bufs",
        "detached",
        "done",
        "exited",
        "fds",
        "in_fd",
        "killed",
        "limit",
        "loop",
        "open_pipes",
        "pid",
        "reaped",
        "status",
        "timed_out",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, limit: int) -> None:
        self.loop = loop
        self.limit = limit
        self.pid = -1
        self.fds = [-1, -1]  # read ends of the stdout and stderr pipes, -1 once closed
        self.bufs = [bytearray(), bytearray()]
        self._dropped = [0, 0]
        self._tail = b""  # the end of stderr, once stderr overflows
        self.in_fd = -1  # write end of the stdin pipe
        self._stdin_view: memoryview | None = None
        self._writing = False  # the stdin pipe is watched for writability
        self._exit_fd = -1  # the pidfd
        self._popen: subprocess.Popen[bytes] | None = None
        self.open_pipes = 0
        self.exited = False  # the child has exited (not necessarily reaped)
        self.reaped = False
        self.detached = False  # reaping handed to a thread
        self.killed = False
        self.timed_out = False
        self.status = 255  # exit code once reaped; 255 if someone else reaped it
        self.done: asyncio.Future[None] = loop.create_future()

    # -- start ---------------------------------------------------------------------------

    def spawn(
        self,
        args: list[str],
        env: Mapping[str, str] | None,
        cwd: str | None,
        stdin_data: bytes | None,
    ) -> None:
        """Start the child with its pipes and the watches on them. Raises
        :class:`CommandNotFound` (or another ``OSError``) if it cannot start."""
        out_r = out_w = err_r = err_w = in_r = -1
        expected = b""
        try:
            out_r, out_w = os.pipe()
            err_r, err_w = os.pipe()
            if stdin_data:
                in_r, self.in_fd = os.pipe()
            stdin = in_r if in_r >= 0 else _devnull()
            GUARDIAN.prepare()  # started before the child: no gap between spawn and watch
            # The child runs before its pid is known here: its pipes are named first, so a
            # kill -9 between the spawn and the watch still takes it (runners/_guardian.py).
            expected = GUARDIAN.expect(out_w, err_w)
            if (
                _USE_POSIX_SPAWN
                and cwd is None
                # posix_spawn's dup2 actions would clobber one another's fds in 0..2
                and min(stdin, out_w, err_w) > 2
            ):
                self.pid = _posix_spawn(args, env, stdin, out_w, err_w)
            else:
                self._popen = subprocess.Popen(
                    args,
                    stdin=stdin,
                    stdout=out_w,
                    stderr=err_w,
                    env=env,
                    cwd=cwd,
                    start_new_session=True,
                )
                self.pid = self._popen.pid
            GUARDIAN.watch(self.pid, expected)  # its group dies with paceline, however it dies
        except BaseException as exc:
            GUARDIAN.cancel(expected)
            for fd in (out_r, err_r, self.in_fd):
                if fd >= 0:
                    _close(fd)
            self.in_fd = -1
            if (
                isinstance(exc, OSError)
                and exc.errno in (errno.ENOENT, errno.EACCES, errno.ENOEXEC)
                and not (cwd is not None and exc.filename == cwd)
            ):
                raise CommandNotFound(args[0], exc.errno) from None
            raise
        finally:
            for fd in (out_w, err_w, in_r):
                if fd >= 0:
                    _close(fd)
        try:
            self._watch(out_r, err_r, stdin_data)
        except BaseException:
            self.close()  # kills the child: nobody would wait for it
            raise

    def _watch(self, out_r: int, err_r: int, stdin_data: bytes | None) -> None:
        """Watch the started child's pipes and its exit."""
        loop = self.loop
        self.fds[0] = out_r
        self.fds[1] = err_r
        self.open_pipes = 2
        # No O_NONBLOCK needed on the read ends: only we read them, and only when readable.
        loop.add_reader(out_r, self._read, 0)
        loop.add_reader(err_r, self._read, 1)
        if self.in_fd >= 0:
            assert stdin_data is not None
            os.set_blocking(self.in_fd, False)
            self._stdin_view = memoryview(stdin_data)
            self._write_stdin()
        if _pidfd_supported():
            with contextlib.suppress(OSError):
                self._exit_fd = os.pidfd_open(self.pid)
        if self._exit_fd >= 0:
            loop.add_reader(self._exit_fd, self._on_pidfd)
        else:
            threading.Thread(
                target=self._wait_thread, name="paceline-exec-wait", daemon=True
            ).start()

    # -- I/O -----------------------------------------------------------------------------

    def _read(self, index: int) -> None:
        fd = self.fds[index]
        try:
            data = os.read(fd, _READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self._keep(index, data)
            return
        self.loop.remove_reader(fd)
        _close(fd)
        self.fds[index] = -1
        self.open_pipes -= 1
        self._check()

    def _keep(self, index: int, data: bytes) -> None:
        buf = self.bufs[index]
        room = self.limit - len(buf)
        if len(data) <= room:
            buf += data
            return
        if room > 0:
            buf += data[:room]
            data = data[room:]
        if index == 1:
            if not self._dropped[1]:
                self._tail = bytes(buf[-_TAIL_BYTES:])
            self._tail = (self._tail + data)[-_TAIL_BYTES:]
        self._dropped[index] += len(data)

    def _write_stdin(self) -> None:
        view = self._stdin_view
        assert view is not None
        try:
            written = os.write(self.in_fd, view)
        except BlockingIOError:
            written = 0
        except OSError:  # the child closed its stdin (EPIPE), or exited
            self._close_stdin()
            return
        view = self._stdin_view = view[written:]
        if not view:
            self._close_stdin()
        elif not self._writing:
            self._writing = True
            self.loop.add_writer(self.in_fd, self._write_stdin)

    def _close_stdin(self) -> None:
        if self.in_fd >= 0:
            if self._writing:
                self.loop.remove_writer(self.in_fd)
                self._writing = False
            _close(self.in_fd)
            self.in_fd = -1
        self._stdin_view = None

    def _drain(self) -> None:
        """Read what the pipes hold right now, without waiting (after a kill)."""
        for index in (0, 1):
            fd = self.fds[index]
            if fd < 0:
                continue
            try:
                os.set_blocking(fd, False)
                for _ in range(16):
                    data = os.read(fd, _READ_CHUNK)
                    if not data:
                        break
                    self._keep(index, data)
            except OSError:
                pass

    # -- exit ----------------------------------------------------------------------------

    def _on_pidfd(self) -> None:
        self.loop.remove_reader(self._exit_fd)
        _close(self._exit_fd)
        self._exit_fd = -1
        self._on_exit()

    def _wait_thread(self) -> None:
        """Fallback without a pidfd: wait for the exit on a thread, tell the loop."""
        try:
            if hasattr(os, "waitid"):  # wait without reaping, as with a pidfd
                os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOWAIT)
            else:
                _, status = os.waitpid(self.pid, 0)
                self.status = os.waitstatus_to_exitcode(status)
                self.reaped = True
        except ChildProcessError:
            self.reaped = True
        if self.detached:  # nobody awaits it any more: reap it here
            self._reap()
            return
        try:
            self.loop.call_soon_threadsafe(self._on_exit)
        except RuntimeError:  # the loop is closed: nobody will reap it but us
            if not self.reaped:
                _reap_blocking(self.pid)
                self.reaped = True

    def _on_exit(self) -> None:
        self.exited = True
        if self.detached:
            self._reap()
            return
        self._check()

    def _check(self) -> None:
        """Settle once the child has exited and its pipes are closed (or it was killed: then
        a grandchild that escaped the group may hold the pipes; don't wait for it)."""
        if self.exited and (self.open_pipes == 0 or self.killed) and not self.done.done():
            self.done.set_result(None)

    def _reap(self) -> None:
        if self.reaped:
            return
        self.reaped = True
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:  # reaped by someone else (a SIGCHLD handler)
            GUARDIAN.forget(self.pid)
            return
        if pid:
            self.status = os.waitstatus_to_exitcode(status)
            GUARDIAN.forget(self.pid)
        else:  # cannot happen once it exited; never leave a zombie anyway
            threading.Thread(target=_reap_blocking, args=(self.pid,), daemon=True).start()

    # -- kill ----------------------------------------------------------------------------

    def kill(self) -> None:
        """SIGKILL the child's process group (its session: the child and what it started)."""
        if self.killed or self.reaped or self.pid <= 0:  # never kill(-1, ...)
            return
        self.killed = True
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except OSError:
            with contextlib.suppress(OSError):
                os.kill(self.pid, signal.SIGKILL)

    def time_out(self) -> None:
        """The timeout's timer: kill, and settle once the child is gone."""
        if self.done.done():
            return
        self.timed_out = True
        self.kill()
        self._check()
        if not self.done.done():
            self.loop.call_later(_REAP_GRACE_S, self._give_up)

    def _give_up(self) -> None:
        if not self.done.done():
            self.detach()
            self.done.set_result(None)

    def detach(self) -> None:
        """Hand the reaping to a thread (the child was killed but has not died yet)."""
        if self.exited or self.detached:
            return
        self.detached = True
        if self._exit_fd >= 0:
            self.loop.remove_reader(self._exit_fd)
            _close(self._exit_fd)
            self._exit_fd = -1
            threading.Thread(target=_reap_blocking, args=(self.pid,), daemon=True).start()
            self.reaped = True
        # else: the waiter thread reaps it (see _on_exit / _wait_thread)

    async def abort(self) -> None:
        """On cancellation: kill, and wait (briefly, once) for the child to die."""
        self.kill()
        if self.exited or self.detached:
            return
        self.done = self.loop.create_future()
        timer = self.loop.call_later(_REAP_GRACE_S, self._give_up)
        try:
            await self.done
        except asyncio.CancelledError:  # cancelled again: stop waiting, still reap
            self.detach()
        finally:
            timer.cancel()

    def close(self) -> None:
        """Stop the watches, close the fds, reap the child (it has exited by now)."""
        loop = self.loop
        if self.killed:
            self._drain()
        for index in (0, 1):
            fd = self.fds[index]
            if fd >= 0:
                loop.remove_reader(fd)
                _close(fd)
                self.fds[index] = -1
        self._close_stdin()
        if self.exited:
            self._reap()
        elif not self.detached:  # only on an unexpected error: never leave it running
            self.kill()
            self.detach()
        if self._popen is not None:
            self._popen.returncode = self.status  # it is reaped; keep Popen.__del__ quiet

    # -- results -------------------------------------------------------------------------

    def text(self, index: int) -> str:
        text = self.bufs[index].decode("utf-8", "replace")
        dropped = self._dropped[index]
        if dropped:
            text += _TRUNCATED.format(dropped=dropped, limit=self.limit)
        return text

    def detail(self) -> str | None:
        """The last line of stderr, for the failure's message (``None``: from the text)."""
        if not self._dropped[1]:
            return None
        return _last_line(self._tail.decode("utf-8", "replace"))


def _posix_spawn(
    args: list[str], env: Mapping[str, str] | None, stdin: int, stdout: int, stderr: int
) -> int:
    program = args[0]
    actions = [
        (os.POSIX_SPAWN_DUP2, stdin, 0),
        (os.POSIX_SPAWN_DUP2, stdout, 1),
        (os.POSIX_SPAWN_DUP2, stderr, 2),
    ]
    # os.environ itself when inheriting: posix_spawn reads it as subprocess does. (A cached
    # copy compared with CPython's private os.environ._data saved ~0.05 ms of CPU per command,
    # 0.22 against 0.27 ms, 2,000 `true` at 8 in flight; the CLI always passes env= anyway.)
    environ: Mapping[str, str] = os.environ if env is None else env
    if "/" not in program:
        path = None if env is None else env.get("PATH", os.defpath)
        if path is None or path == os.environ.get("PATH"):
            # posix_spawnp searches the parent's PATH.
            return os.posix_spawnp(
                program, args, environ, file_actions=actions, setsid=True, setsigdef=_SIGDEF
            )
        found = shutil.which(program, path=path)  # the child's PATH, as subprocess does
        if found is None:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), program)
        program = found
    return os.posix_spawn(
        program, args, environ, file_actions=actions, setsid=True, setsigdef=_SIGDEF
    )


# -- the operation -------------------------------------------------------------------------


def _command(argv: Sequence[str] | str, shell: bool) -> list[str]:
    if shell:
        if isinstance(argv, str):
            return [SHELL, "-c", argv]
        return [SHELL, "-c", *argv]
    args = [argv] if isinstance(argv, str) else list(argv)
    if not args or not args[0]:
        raise InvalidArgument("empty command: give at least the program to run")
    return args


async def run_command(
    argv: Sequence[str] | str,
    *,
    shell: bool = False,
    timeout_s: float | None = None,
    stdin_data: bytes | None = None,
    capture_limit_bytes: int = DEFAULT_CAPTURE_LIMIT,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
) -> dict[str, Any]:
    """Run a command; return ``{"exit_code": 0, "stdout": ..., "stderr": ...}``.

    ``argv`` is the program and its arguments, passed as they are (no shell, no expansion).
    With ``shell=True``, a string is a command line for ``/bin/sh -c`` (a sequence: the
    line and then ``$0``, ``$1``, ... as with :mod:`subprocess`). Output is decoded as UTF-8
    (``errors="replace"``); each of stdout and stderr keeps its first
    ``capture_limit_bytes`` bytes and, if there was more, ends with a marker saying how
    much was dropped. stdin is ``stdin_data``, or empty (``/dev/null``). ``env`` replaces
    the environment (``None``: inherit); ``cwd`` is the child's working directory.

    Raises :class:`CommandFailed` for a non-zero exit or a death by signal,
    :class:`CommandNotFound` if the program does not exist or cannot be executed, and
    :class:`CommandTimedOut` (a :class:`TimeoutError`) after ``timeout_s`` seconds. On a
    timeout or a cancellation the child's whole process group is killed (SIGKILL) and the
    child reaped before the exception propagates.
    """
    if capture_limit_bytes < 0:
        raise InvalidArgument(f"capture_limit_bytes={capture_limit_bytes!r}: must be >= 0")
    if timeout_s is not None and not timeout_s > 0:
        raise InvalidArgument(f"timeout_s={timeout_s!r}: must be a number of seconds > 0")
    args = _command(argv, shell)
    loop = asyncio.get_running_loop()
    child = _Child(loop, capture_limit_bytes)
    child.spawn(args, env, cwd, stdin_data)
    timer = None if timeout_s is None else loop.call_later(timeout_s, child.time_out)
    try:
        await child.done
    except asyncio.CancelledError:
        await child.abort()
        raise
    finally:
        if timer is not None:
            timer.cancel()
        child.close()
    if child.timed_out:
        raise CommandTimedOut(timeout_s or 0.0, child.text(0), child.text(1))
    if child.status != 0:
        raise CommandFailed(child.status, child.text(0), child.text(1), child.detail())
    return {"exit_code": 0, "stdout": child.text(0), "stderr": child.text(1)}
