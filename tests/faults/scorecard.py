#!/usr/bin/env python3
"""The fault battery as a table: one line per test of services/cxstream/tests/faults.rs,
read from the JSON lines those tests append to $CX_FAULTS_SCORECARD (deploy/local/test.sh
sets it). Each line is measured by its test before the test's assertions judge it, so a
failing test shows here with what it found.

    python3 tests/faults/scorecard.py [FILE]
"""
import json
import os
import sys


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("CX_FAULTS_SCORECARD", "")
    if not path or not os.path.exists(path):
        print("scorecard: no results (run the fault battery with CX_FAULTS_SCORECARD set)", file=sys.stderr)
        return 1
    rows = [json.loads(line) for line in open(path) if line.strip()]
    head = ["test", "fault", "records in", "counts exact", "duplicates", "lost", "catch-up after the faults (s)"]
    table = [[r["test"], r["fault"], str(r["records_in"]), "yes" if r["exact"] else "NO",
              str(r["duplicates"]), str(r["lost"]), f'{r["recovery_s"]:.1f}'] for r in rows]
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    for row in table:
        print("| " + " | ".join(row) + " |")
    bad = [r["test"] for r in rows if not r["exact"] or r["duplicates"] or r["lost"]]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
