"""Children die with paceline, also when paceline is killed with ``kill -9``.

``exec`` starts every child in a session of its own (so a timeout, a cancellation or a graceful
stop can kill the child's whole process group), and that same session keeps a child running
when paceline dies without cleaning up: ``kill -9``, the OOM killer, a crash in C. Linux's
``PR_SET_PDEATHSIG`` does not fit: it must be set in the child between fork and exec, which
the ``posix_spawn`` path (vfork + exec, no Python in the child) has no hook for, and it reaches
only the direct child, not the ``sleep`` that ``sh -c`` started.

So one small guardian process per paceline process holds the read end of a pipe and is told,
a line each, which process groups to kill ("+pgid" on start, "-pgid" once reaped). When
paceline dies, however it dies, the kernel closes the write end; the guardian reads EOF, kills
the groups still listed with SIGKILL, and exits. It runs in its own session (Ctrl-C on the
terminal does not reach it) with nothing open but the pipe. Cost: one interpreter start per
paceline process (~20 ms, at the first child) and two writes of a few bytes per child.

A child's pid is known only once the spawn returns, and by then the child runs: under load
paceline may wait milliseconds for a CPU (or the GIL) before it tells the guardian, while the
child already started its own children. A ``kill -9`` in that gap left them running (the
kill -9 test failed in 11 of 20 runs with four CPU-bound loops on this 2-core machine). So
before the spawn paceline also names the child's stdout and stderr pipes ("?inode inode"),
which only that child (and what it starts) will hold, and the "+pgid" line after it clears
them. If paceline dies with a child named but not yet told, the guardian finds the processes
holding those pipes in ``/proc`` and kills their process groups (a process still in
paceline's session, one not yet past its ``setsid``, alone: never paceline's own group).
Pipe inodes are numbered by a counter, never reused in practice, so nothing else matches.

>>> guardian = Guardian()
>>> guardian.forget(12345)  # not started: nothing to tell (commands.py: watch, then forget)
>>> guardian.pid
0
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading

__all__ = ["GUARDIAN", "Guardian"]

# The guardian itself: stdlib only, no site (-S), no PYTHON* variables (-I).
_CODE = """
import os, signal
for name in ("SIGINT", "SIGHUP", "SIGTERM", "SIGQUIT"):
    signal.signal(getattr(signal, name), signal.SIG_IGN)
try:
    own_session = os.getsid(os.getppid())
except OSError:
    own_session = -1
groups, pending, rest = set(), set(), b""
while True:
    data = os.read(0, 65536)
    if not data:
        break
    *lines, rest = (rest + data).split(b"\\n")
    for line in lines:
        kind, words = line[:1], line[1:].split()
        if kind == b"+":
            groups.add(int(words[0]))
            pending.difference_update(words[1:])
        elif kind == b"-":
            groups.discard(int(words[0]))
        elif kind == b"?":
            pending.update(words)
        elif kind == b"~":
            pending.difference_update(words)
for group in groups:
    try:
        os.killpg(group, signal.SIGKILL)
    except OSError:
        pass
links = {"pipe:[%s]" % word.decode() for word in pending}
if links:
    try:
        entries = os.listdir("/proc")
    except OSError:
        entries = []
    for entry in entries:
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            fds = os.listdir("/proc/%d/fd" % pid)
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink("/proc/%d/fd/%s" % (pid, fd))
            except OSError:
                continue
            if link in links:
                try:
                    if own_session < 0 or os.getsid(pid) == own_session:
                        os.kill(pid, signal.SIGKILL)
                    else:
                        os.killpg(os.getpgid(pid), signal.SIGKILL)
                except OSError:
                    pass
                break
"""


class Guardian:
    """Kills the process groups it was told of if this process dies without forgetting them.

    Started at the first :meth:`watch`; restarted in a forked child. Never raises: where it
    cannot start (no ``posix_spawn``, no interpreter to run), children are not guarded.
    """

    __slots__ = ("_fd", "_lock", "_owner", "pid")

    def __init__(self) -> None:
        self.pid = 0  # the guardian's pid (0: not started)
        self._fd = -1  # the pipe's write end (-1: not started, -2: cannot guard)
        self._owner = 0  # the process that started it
        self._lock = threading.Lock()

    def prepare(self) -> None:
        """Start the guardian now, before a child is spawned: :meth:`watch` right after the
        spawn is then one write. Started inside the first ``watch`` instead, a second child
        spawned at the same time waited for that start (an interpreter's spawn, milliseconds
        under load) before it was watched, and a ``kill -9`` of paceline in that gap left it
        running with its own children (the kill -9 test, seen once in a loaded suite run)."""
        self._ready()

    def expect(self, *pipe_fds: int) -> bytes:
        """Name the pipes a child about to be spawned gets (its stdout, stderr), before the
        spawn: should this process die before :meth:`watch`, the guardian kills whatever holds
        them. Returns what :meth:`watch` and :meth:`cancel` take."""
        if not self._ready():
            return b""
        try:
            inodes = b"".join(b" %d" % os.fstat(fd).st_ino for fd in pipe_fds)
        except OSError:  # not a file descriptor: nothing to name
            return b""
        if inodes:
            self._send(b"?%s\n" % inodes)
        return inodes

    def watch(self, pgid: int, expected: bytes = b"") -> None:
        """Kill process group ``pgid`` should this process die before :meth:`forget`;
        ``expected``: what :meth:`expect` returned for this child (its pipes now told)."""
        if self._ready():
            self._send(b"+%d%s\n" % (pgid, expected))

    def cancel(self, expected: bytes) -> None:
        """The spawn :meth:`expect` was told of failed (or is already watched): forget its
        pipes."""
        if expected and self._fd >= 0 and self._owner == os.getpid():
            self._send(b"~%s\n" % expected)

    def forget(self, pgid: int) -> None:
        """``pgid`` is reaped: nothing to kill (its number may soon be another's)."""
        if self._fd >= 0 and self._owner == os.getpid():
            self._send(b"-%d\n" % pgid)

    def _ready(self) -> bool:
        if self._owner == os.getpid():
            return self._fd >= 0
        with self._lock:
            if self._owner != os.getpid():
                self._start()
                # Owned only once started: a thread that sees this process as the owner (the
                # fast path above, without the lock) must find the pipe ready, not half-made.
                self._owner = os.getpid()
        return self._fd >= 0

    def _start(self) -> None:
        self._fd, self.pid = -2, 0
        if not sys.executable or not hasattr(os, "posix_spawn"):
            return
        try:
            read_fd, write_fd = os.pipe()  # close-on-exec: no child but the guardian has it
        except OSError:  # out of file descriptors: the children run unguarded
            return
        try:
            self.pid = os.posix_spawn(
                sys.executable,
                [sys.executable, "-I", "-S", "-c", _CODE],
                {},
                file_actions=[
                    (os.POSIX_SPAWN_DUP2, read_fd, 0),
                    (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                    (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0),
                ],
                setsid=True,
            )
        except OSError:
            os.close(write_fd)
            return
        finally:
            os.close(read_fd)
        os.set_blocking(write_fd, False)  # a stuck guardian must never block the event loop
        self._fd = write_fd

    def _send(self, line: bytes) -> None:
        try:
            os.write(self._fd, line)  # one line, well under PIPE_BUF: atomic across threads
        except OSError:  # the guardian died, or is stuck with a full pipe: stop guarding
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -2
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, os.WNOHANG)


GUARDIAN = Guardian()
"""The one guardian of this process's ``exec`` children."""
