"""The processes of a local Ray, for `fastllm serve --ray` to leave none behind: this process's
descendants that are Ray's, found in Linux's /proc (elsewhere none are found, and
ray.shutdown() is all there is), and their end."""

from __future__ import annotations

import os


def ray_descendants() -> list[tuple[int, str]]:
    """(pid, start time) of this process's descendants that are Ray's, from Linux's /proc
    (elsewhere none: there ray.shutdown() is all there is)."""
    import ray

    home = os.path.dirname(ray.__file__) + os.sep
    parent: dict[int, int] = {}
    info: dict[int, tuple[str, str]] = {}
    try:
        pids = [int(d) for d in os.listdir("/proc") if d.isdigit()]
    except OSError:
        return []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError):
            continue
        parent[pid] = int(fields[1])
        info[pid] = (fields[19].decode(), cmd)  # start time (clock ticks since boot), command
    out, todo = [], [os.getpid()]
    while todo:
        p = todo.pop()
        for child in (c for c, pp in parent.items() if pp == p):
            todo.append(child)
            start, cmd = info[child]
            # a worker or agent names itself ray::...; the others run files of the ray package
            if cmd.startswith("ray::") or home in cmd:
                out.append((child, start))
    return out


def end(procs: list[tuple[int, str]]) -> None:
    """SIGTERM, then after a grace of a few seconds SIGKILL, to those of `procs` still running
    (the same processes: their start time is checked, so a reused pid is left alone)."""
    import signal
    import time

    def alive() -> list[int]:
        left = []
        for pid, start in procs:
            try:
                with open(f"/proc/{pid}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            if fields[19].decode() == start and fields[0] != b"Z":
                left.append(pid)
        return left

    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 0.0)):
        left = alive()
        if not left:
            return
        for pid in left:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        for _ in range(int(grace * 10)):
            if not alive():
                return
            time.sleep(0.1)
