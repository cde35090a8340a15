"""Child processes that never outlive their parent, even after a SIGKILL of the parent (no chance to clean up).

- `exit_with_parent`: a thread that exits the process when its parent is gone. For the node's job workers,
  which a pool may start from a thread that ends long before them (PR_SET_PDEATHSIG would fire then).
- `die_with_parent`: the kernel's PR_SET_PDEATHSIG (Linux), which needs no Python thread and so also ends a
  process busy in C code holding the GIL (pyradiomics); for processes started from their parent's main
  thread (a job's radiomics extraction processes). Falls back to the thread elsewhere.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time

WATCH_INTERVAL_S = 0.5
PR_SET_PDEATHSIG = 1


def _expected_parent() -> int:
    """The pid of the process that started this one (multiprocessing knows it even when the parent died while
    this one was still starting, and the kernel already gave it to init)."""
    parent = multiprocessing.parent_process()
    return parent.pid if parent is not None and parent.pid else os.getppid()


def exit_with_parent() -> None:
    """Start a daemon thread that ends this process as soon as its parent process is gone."""
    parent = _expected_parent()
    if os.getppid() != parent:
        os._exit(70)

    def watch() -> None:
        while True:
            time.sleep(WATCH_INTERVAL_S)
            if os.getppid() != parent:
                os._exit(70)  # EX_SOFTWARE: the node is gone, nothing here may go on without it

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def descendants(pid: int) -> list[int]:
    """The processes below `pid`, children first (Linux /proc; none found elsewhere)."""
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    parent = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    found: list[int] = []
    pending = [pid]
    while pending:
        for child in children.get(pending.pop(0), []):
            found.append(child)
            pending.append(child)
    return found


def die_with_parent() -> None:
    """SIGKILL this process when its parent dies (the kernel sends it); the watching thread as a fallback."""
    parent = _expected_parent()
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0:
                if os.getppid() != parent:  # the parent died before the call took effect (or before we started)
                    os._exit(70)
                return
        except (OSError, AttributeError):
            pass
    exit_with_parent()
