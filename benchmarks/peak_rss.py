"""Run a command and report its peak anonymous memory (``RssAnon``, sampled from ``/proc``; Linux).

``RssAnon`` counts what the process allocated, not the pages of files it memory-maps (the MEMO
folder's weights, when they are used in the files' own dtype), which ``/usr/bin/time``'s maximum RSS
includes. Also printed: the peak ``VmRSS`` and the peak of the machine's used memory
(``MemTotal − MemAvailable``), each sampled every ``--interval`` seconds (children included).

    python benchmarks/peak_rss.py [--json out.json] -- letstalk generate ...
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

GiB = 1024 ** 3


def _status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (FileNotFoundError, ProcessLookupError):
        return []


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(_children(p))
    return out


def _machine_used_kib() -> int:
    info = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        k, v = line.split(":", 1)
        info[k] = int(v.split()[0])
    return info["MemTotal"] - info["MemAvailable"]


def measure(cmd: list[str], interval: float = 0.2) -> dict:
    """Run ``cmd``; return its exit code, seconds, and the peaks (bytes)."""
    base_used = _machine_used_kib()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd)
    peak = {"rss_anon": 0, "vm_rss": 0, "machine_used": 0}
    start_anon = None
    while proc.poll() is None:
        pids = _tree(proc.pid)
        anon = sum(_status_kib(p, "RssAnon") for p in pids)
        if start_anon is None and anon:
            start_anon = anon
        peak["rss_anon"] = max(peak["rss_anon"], anon)
        peak["vm_rss"] = max(peak["vm_rss"], sum(_status_kib(p, "VmRSS") for p in pids))
        peak["machine_used"] = max(peak["machine_used"], _machine_used_kib())
        time.sleep(interval)
    return {"returncode": proc.returncode, "seconds": time.perf_counter() - t0,
            "peak_rss_anon_bytes": peak["rss_anon"] * 1024, "peak_vm_rss_bytes": peak["vm_rss"] * 1024,
            "peak_machine_used_bytes": peak["machine_used"] * 1024,
            "machine_used_before_bytes": base_used * 1024, "command": cmd}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--interval", type=float, default=0.2)
    p.add_argument("--json", help="also write the figures here")
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    a = p.parse_args(argv)
    cmd = a.cmd[1:] if a.cmd[:1] == ["--"] else a.cmd
    if not cmd:
        p.error("give the command after --")
    r = measure(cmd, a.interval)
    print(f"peak RssAnon {r['peak_rss_anon_bytes'] / GiB:.2f} GiB, peak VmRSS {r['peak_vm_rss_bytes'] / GiB:.2f} GiB, "
          f"machine used peak {r['peak_machine_used_bytes'] / GiB:.2f} GiB (before {r['machine_used_before_bytes'] / GiB:.2f}), "
          f"{r['seconds']:.0f} s, exit {r['returncode']}", file=sys.stderr)
    if a.json:
        Path(a.json).write_text(json.dumps(r, indent=2))
    return r["returncode"]


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
