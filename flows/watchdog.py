"""A watchdog that outlives its parent by a moment: when the parent dies, however it dies
(kill -9 included), it ends every process the parent started (the temporary Prefect server,
Dask's nannies and workers), so none is left running, re-parented to PID 1."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil

INTERVAL = 0.5  # seconds between looks at the parent's descendants
_started: list[subprocess.Popen] = []


def guard() -> None:
    """Start this process's watchdog (once)."""
    if _started:
        return
    _started.append(
        subprocess.Popen(
            [sys.executable, "-m", "salaudit.flows.watchdog", str(os.getpid())],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C in the terminal does not reach it
        )
    )


def watch(parent: int) -> None:
    """Note the parent's descendants while it lives (the parent is gone once this process is
    re-parented); then terminate them, and kill what is left after 3 seconds."""
    me, seen = os.getpid(), {}
    while os.getppid() == parent:
        try:
            for p in psutil.Process(parent).children(recursive=True):
                if p.pid != me:
                    seen[p.pid] = p
        except psutil.NoSuchProcess:
            break
        time.sleep(INTERVAL)
    alive = [p for p in seen.values() if p.is_running()]  # is_running checks the pid's reuse
    for p in alive:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            continue
    _, left = psutil.wait_procs(alive, timeout=3)
    for p in left:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            continue


if __name__ == "__main__":
    watch(int(sys.argv[1]))
