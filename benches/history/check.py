#!/usr/bin/env python3
"""Checks one history-benchmark database against the ground truth and times the reads.

Independent of the pipeline: it reads the simulator's ground-truth CSV and ClickHouse's
committed per-minute view, and compares cell by cell (zero cells dropped on both sides)."""
import statistics
import sys
import time
import urllib.error
import urllib.request


def query(url, sql):
    req = urllib.request.Request(url + "/", data=sql.encode())
    try:
        with urllib.request.urlopen(req, timeout=600) as r:
            return r.read().decode()
    except urllib.error.HTTPError as e:
        sys.exit(f"ClickHouse refused {sql.strip()[:200]}...: {e.read().decode()[:500]}")


def timed(url, sql, runs=7):
    query(url, sql + " FORMAT Null")  # warm the caches once
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        query(url, sql + " FORMAT Null")
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times), max(times)


def truth_cells(path, key_fields=5):
    cells = {}
    with open(path) as f:
        next(f)
        for line in f:
            p = line.rstrip("\n").split(",")
            v = tuple(int(x) for x in p[key_fields:])
            if any(v):
                cells[tuple(p[:key_fields])] = v
    return cells


def main():
    url, db, truth, label, secs = sys.argv[1:6]
    want = truth_cells(truth)
    got = {}
    for line in query(url, f"""
        SELECT toUnixTimestamp(minute) * 1000 AS m, stage, touchpoint, channel, segment,
               sum(nps_promoters), sum(nps_passives), sum(nps_detractors), sum(csat_n),
               sum(csat_top2), sum(csat_sum), sum(ces_n), sum(ces_agree), sum(ces_sum),
               sum(stage_entries), sum(touchpoints), sum(stage_conversions),
               sum(convert_ms_sum), sum(stage_dropoffs) + sum(stage_open)
        FROM {db}.metrics_minute_committed
        GROUP BY m, stage, touchpoint, channel, segment FORMAT TabSeparated""").splitlines():
        p = line.split("\t")
        v = tuple(int(x) for x in p[5:])
        if any(v):
            got[tuple(p[:5])] = v
    differ = sum(1 for k in want.keys() | got.keys() if want.get(k) != got.get(k))
    want_steps = truth_cells(truth.replace(".csv", ".steps.csv"), key_fields=6)
    got_steps = {}
    for line in query(url, f"""
        SELECT toUnixTimestamp(minute) * 1000 AS m, step, stage, touchpoint, channel, segment,
               sum(starts), sum(conversions), sum(convert_ms_sum), sum(dropoffs) + sum(open_attempts)
        FROM {db}.steps_minute_committed
        GROUP BY m, step, stage, touchpoint, channel, segment FORMAT TabSeparated""").splitlines():
        p = line.split("\t")
        v = tuple(int(x) for x in p[6:])
        if any(v):
            got_steps[tuple(p[:6])] = v
    steps_differ = sum(1 for k in want_steps.keys() | got_steps.keys() if want_steps.get(k) != got_steps.get(k))
    records = query(url, f"SELECT sum(records) FROM {db}.committed_records").strip()
    batches = query(url, f"SELECT sum(n) FROM (SELECT max(batch_seq) + 1 AS n FROM {db}.ingest_batches GROUP BY source_partition)").strip()
    compactions = query(url, f"SELECT count() FROM {db}.compactions").strip()
    rows = query(url, f"""
        SELECT table, sum(rows), sum(bytes_on_disk) FROM system.parts
        WHERE database = '{db}' AND active AND table IN ('metrics_minute', 'metrics_minute_compacted', 'journeys', 'journeys_compacted', 'ingest_batches')
        GROUP BY table ORDER BY table FORMAT TabSeparated""").strip().splitlines()
    rolling = timed(url, f"SELECT * FROM {db}.rolling_metrics")
    nps7d = timed(url, f"""
        SELECT stage, sum(promoters) AS p, sum(detractors) AS d, sum(nps_n) AS n, 100 * (p - d) / n
        FROM {db}.rolling_metrics WHERE window = '7d' GROUP BY stage""")
    # The README's funnel query, over the whole range.
    funnel = timed(url, f"""
        SELECT stage, sum(entries) AS entered, sum(conversions) AS converted,
               sum(dropoffs) AS dropped, sum(open_entries) AS still_open,
               sumIf(conversions, open_entries = 0) / sumIf(conversions + dropoffs, open_entries = 0) AS decided,
               sum(convert_ms_total) / sum(conversions) AS mean_ms
        FROM {db}.stage_funnel_minute GROUP BY stage""")
    print(f"\n{label}")
    print(f"  journey caught up in {secs} s: {records} records in {batches} batches, {compactions} compactions")
    print(f"  cells equal to the ground truth: {'yes' if differ == 0 else 'NO'} ({len(want)} cells, {differ} differ)")
    print(f"  step cells equal to the ground truth: {'yes' if steps_differ == 0 else 'NO'} ({len(want_steps)} cells, {steps_differ} differ)")
    print(f"  rolling_metrics, all windows: {rolling[0]:.0f} ms median ({rolling[1]:.0f} ms max)")
    print(f"  7-day NPS by stage:           {nps7d[0]:.0f} ms median ({nps7d[1]:.0f} ms max)")
    print(f"  funnel of the whole range:    {funnel[0]:.0f} ms median ({funnel[1]:.0f} ms max)")
    for r in rows:
        t, n, b = r.split("\t")
        print(f"  {t:<26} {int(n):>9} rows {int(b) / 1e6:>8.1f} MB")
    return 0 if differ == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
