#!/usr/bin/env python3
"""Starts N `cxstream journey` instances of one consumer group on topics already filled,
waits until ClickHouse has every input record committed, stops them with SIGTERM, and
prints one JSON line: wall time to all committed, throughput, and the instances' CPU and
peak memory (each instance's own, from wait4).

    run.py --bin CXSTREAM --config FILE --instances N --clickhouse URL --database DB
           --expect RECORDS [--timeout S]
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request


def committed(url, db):
    q = f"SELECT toInt64(sum(records)) FROM {db}.committed_records"
    with urllib.request.urlopen(url, data=q.encode(), timeout=10) as r:
        text = r.read().decode().strip()
    return int(text or 0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--config", required=True)
    ap.add_argument("--instances", type=int, required=True)
    ap.add_argument("--clickhouse", required=True)
    ap.add_argument("--database", required=True)
    ap.add_argument("--expect", type=int, required=True)
    ap.add_argument("--timeout", type=float, default=1800)
    a = ap.parse_args()
    start = time.monotonic()
    children = [subprocess.Popen([a.bin, "-c", a.config, "journey"])
                for _ in range(a.instances)]
    done, n = None, 0
    while time.monotonic() - start < a.timeout:
        if any(c.poll() is not None for c in children):
            break
        try:
            n = committed(a.clickhouse, a.database)
        except OSError:
            pass
        if n >= a.expect:
            done = time.monotonic() - start
            break
        time.sleep(0.2)
    for c in children:
        if c.poll() is None:
            c.send_signal(signal.SIGTERM)
    cpu, rss = 0.0, []
    for c in children:
        _, _, usage = os.wait4(c.pid, 0)
        cpu += usage.ru_utime + usage.ru_stime
        rss.append(round(usage.ru_maxrss / 1024, 1))
    if done is None:
        print(f"run.py: {a.instances} instance(s) committed {n} of {a.expect} records "
              f"before stopping", file=sys.stderr)
        sys.exit(1)
    print(json.dumps({"instances": a.instances, "records": n, "wall_s": round(done, 2),
                      "records_per_s": round(n / done), "cpu_s": round(cpu, 2),
                      "cpu_us_per_record": round(1e6 * cpu / n, 2), "peak_rss_mib": rss}))


if __name__ == "__main__":
    main()
