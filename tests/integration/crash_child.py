"""A journaled batch of N items that logs every execution; run by test_crash_resume.py.

usage: crash_child.py FACE JOURNAL EXEC_LOG N RUN_NUMBER
Each execution appends "<item id>\\n" to EXEC_LOG before doing its work (O_APPEND writes of a
few bytes are atomic), so the log counts executions even when the process is killed.
"""

import asyncio
import os
import sys
import time

from paceline import BatchExecutor, BatchInterrupted, batch_execute


def work(i: int) -> int:
    os.write(LOG_FD, f"{i}\n".encode())
    time.sleep(0.002)
    return i * i


async def awork(i: int) -> int:
    os.write(LOG_FD, f"{i}\n".encode())
    await asyncio.sleep(0.002)
    return i * i


def main() -> None:
    global LOG_FD
    face, journal, exec_log, n, run = (
        sys.argv[1],
        sys.argv[2],
        sys.argv[3],
        int(sys.argv[4]),
        sys.argv[5],
    )
    LOG_FD = os.open(exec_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.write(LOG_FD, f"RUN {run}\n".encode())
    print("started", flush=True)
    try:
        if face == "threads":
            BatchExecutor(stop_on_error=False, max_workers=8).execute_batch(
                [lambda i=i: work(i) for i in range(n)],
                item_ids=[str(i) for i in range(n)],
                journal=journal,
                journal_label="crash-test",
            )
        else:
            asyncio.run(
                batch_execute(range(n), awork, 8, journal=journal, journal_label="crash-test")
            )
    except (BatchInterrupted, KeyboardInterrupt):
        sys.exit(130)
    print("finished", flush=True)


LOG_FD = -1

if __name__ == "__main__":
    main()
