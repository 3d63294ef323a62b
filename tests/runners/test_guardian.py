"""The guardian that kills ``exec`` children when paceline dies (runners/_guardian.py)."""

from __future__ import annotations

import os
import threading
import time

import pytest

from paceline.runners._guardian import Guardian


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
