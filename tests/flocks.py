"""Who waits for an ``flock``, as the kernel reports it in ``/proc/locks``.

A negative check ("the writer did not get the lock") means something only once the writer has
asked for the lock; a blocked request shows in ``/proc/locks`` as a ``->`` line on the file.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path


def flock_waiters(path: Path) -> list[int]:
    """The PIDs of the processes blocked in ``flock`` on ``path``, one per waiting request."""
    info = os.stat(path)
    device = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    waiters = []
    with open("/proc/locks") as locks:
        for line in locks:
            # "1: -> FLOCK  ADVISORY  WRITE 6614 fe:00:2146726 0 EOF"
            fields = line.split()
            if fields[1:3] == ["->", "FLOCK"] and fields[6] == device:
                waiters.append(int(fields[5]))
    return waiters
