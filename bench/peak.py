"""Peak memory of a child process's own program."""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading

POLL_S = 0.005


def _vm_hwm_kib(pid: int) -> int | None:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return None


def wait_peak(proc: subprocess.Popen[bytes]) -> tuple[int, int]:
    """Wait for `proc`; return its wait status and the peak RSS (KiB) of its program.

    The rusage of `os.wait4` cannot tell it: a child starts with its parent's peak RSS
    (fork and vfork both hand it down, and exec keeps it), so once this process has
    held 120 MiB every child reports at least that. VmHWM in /proc/PID/status belongs
    to the memory of the program the child exec'd; it is polled until the child exits.
    """
    peak = 0
    done = threading.Event()

    def poll() -> None:
        nonlocal peak
        while not done.is_set():
            value = _vm_hwm_kib(proc.pid)
            if value is not None:
                peak = max(peak, value)
            done.wait(POLL_S)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    _pid, status = os.waitpid(proc.pid, 0)
    done.set()
    poller.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return status, peak
