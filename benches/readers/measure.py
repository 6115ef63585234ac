#!/usr/bin/env python3
"""Runs a command and prints what it cost: wall time, CPU (user + system, its children
included) and peak resident memory, as one JSON line appended to OUT, then exits with its status.

    measure.py OUT NAME COMMAND [ARG...]
"""
import json
import os
import subprocess
import sys
import time


def main():
    out, name, cmd = sys.argv[1], sys.argv[2], sys.argv[3:]
    start = time.monotonic()
    child = subprocess.Popen(cmd)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.monotonic() - start
    with open(out, "a") as f:
        f.write(json.dumps({"reader": name, "wall_s": round(wall, 3),
                            "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
                            "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}) + "\n")
    sys.exit(os.waitstatus_to_exitcode(status))


if __name__ == "__main__":
    main()
