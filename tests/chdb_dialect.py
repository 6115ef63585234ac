#!/usr/bin/env python3
"""Runs every ClickHouse migration and the views over sample rows on current ClickHouse
(chdb embeds 26.x in-process), so the DDL that the real 18.16 server accepts is checked
against the modern dialect too. Prints a cargo-style result line."""
import glob
import os
import re
import sys
import tempfile

from chdb import session

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def statements(path, db):
    text = "\n".join(l for l in open(path) if not l.lstrip().startswith("--"))
    return [s.strip().replace("{db}", db) for s in text.split(";") if s.strip()]


ADD_COLUMN = re.compile(r"ALTER TABLE \w+\.(\w+) ADD COLUMN (\w+)")


def apply(s, st):
    """As `cxstream migrate` does: an ADD COLUMN whose column exists is skipped."""
    m = ADD_COLUMN.match(st)
    if m and str(s.query(
            f"SELECT count() FROM system.columns WHERE database = 'cx' AND table = '{m[1]}' "
            f"AND name = '{m[2]}'", "CSV")).strip() != "0":
        return
    s.query(st)


def main():
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        s = session.Session(tmp)
        s.query("CREATE DATABASE IF NOT EXISTS cx")
        files = sorted(glob.glob(os.path.join(ROOT, "schemas/clickhouse/*.sql")))
        for f in files:
            for st in statements(f, "cx"):
                try:
                    apply(s, st)
                except Exception as e:  # noqa: BLE001 - report every failing statement
                    failures.append(f"{os.path.basename(f)}: {st[:70]}...: {e}")
        # Applying twice must be harmless (IF NOT EXISTS everywhere).
        for f in files:
            for st in statements(f, "cx"):
                try:
                    apply(s, st)
                except Exception as e:  # noqa: BLE001
                    failures.append(f"re-apply {os.path.basename(f)}: {e}")
        # Partition 0 is claimed (claim 2^32 + 7, counting from batch 0 on); the committed
        # watermark (10:00:30) ends the rolling windows.
        s.query(
            "INSERT INTO cx.partition_claims VALUES ('retail', 0, 4294967303, [4294967303], [0], "
            "[18446744073709551615], 'test', now())"
        )
        # A higher claim's intent (empty chain): the claim above still says what counts.
        s.query(
            "INSERT INTO cx.partition_claims VALUES ('retail', 0, 8589934593, [], [], [], 'test', now())"
        )
        s.query(
            "INSERT INTO cx.ingest_batches (journey, source_partition, batch_seq, batch_attempt, "
            "touchpoints_next_offset, answers_next_offset, watermark_ms, records, committed_at, claim) "
            "VALUES ('retail', 0, 0, 7, 10, 5, toUnixTimestamp(toDateTime('2026-11-02 10:00:30')) * 1000, 15, now(), 4294967303),"
            # a zombie's marker of the same batch under a claim outside the chain: must not count
            " ('retail', 0, 0, 9, 10, 5, toUnixTimestamp(toDateTime('2026-11-02 10:00:30')) * 1000, 15, now(), 5)"
        )
        s.query(
            "INSERT INTO cx.metrics_minute (minute, journey, stage, touchpoint, channel, segment, "
            "nps_promoters, nps_passives, nps_detractors, csat_n, csat_top2, csat_sum, ces_n, ces_agree, ces_sum, "
            "stage_entries, touchpoints, source_partition, batch_seq, batch_attempt, "
            "stage_conversions, convert_ms_sum, stage_dropoffs, stage_open) VALUES "
            "(toDateTime('2026-11-02 10:00:00'), 'retail', 'conversion', 'purchase_completed', 'web', 'vip',"
            " 3, 1, 1, 2, 1, 7, 0, 0, 0, 1, 4, 0, 0, 7, 1, 60000, 0, 0),"
            # an uncommitted attempt: must not count
            "(toDateTime('2026-11-02 10:00:00'), 'retail', 'conversion', 'purchase_completed', 'web', 'vip',"
            " 100, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 8, 5, 5, 5, 5),"
            # the zombie's attempt: must not count either
            "(toDateTime('2026-11-02 10:00:00'), 'retail', 'conversion', 'purchase_completed', 'web', 'vip',"
            " 100, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9, 5, 5, 5, 5)"
        )
        funnel = str(s.query(
            "SELECT stage, entries, conversions, dropoffs, open_entries, convert_ms_total "
            "FROM cx.stage_funnel_minute", "CSV"
        )).strip()
        if funnel != '"conversion",1,1,0,0,60000':
            failures.append(f"stage_funnel_minute returned {funnel!r}")
        s.query(
            "INSERT INTO cx.journey_stages VALUES ('retail', 'conversion', 2, 1800000, 0.6, 1, now())"
        )
        funnel = str(s.query(
            "SELECT stage, entries, conversions, target_conversion, budget_ms, decided FROM cx.stage_funnel", "CSV"
        )).strip()
        if funnel != '"conversion",1,1,0.6,1800000,0':
            failures.append(f"stage_funnel returned {funnel!r}")
        out = s.query(
            "SELECT window, promoters, detractors, nps_n, round(nps, 1), csat_responses FROM cx.rolling_metrics "
            "ORDER BY window", "CSV"
        )
        rows = [l for l in str(out).strip().splitlines() if l]
        expected_row = '3,1,5,40,2'
        if len(rows) != 3 or not all(r.endswith(expected_row) for r in rows):
            failures.append(f"rolling_metrics returned {rows!r}, expected 3 windows ending {expected_row}")
        # Batch 0 folded into generation 55: the same figures, and the folded deltas no
        # longer count (a second copy of them must not).
        s.query(
            "INSERT INTO cx.metrics_minute_compacted (minute, journey, stage, touchpoint, channel, segment, "
            "nps_promoters, nps_passives, nps_detractors, csat_n, csat_top2, csat_sum, ces_n, ces_agree, ces_sum, "
            "stage_entries, touchpoints, stage_conversions, convert_ms_sum, stage_dropoffs, stage_open, "
            "source_partition, generation) SELECT minute, journey, stage, touchpoint, channel, segment, "
            "sum(nps_promoters), sum(nps_passives), sum(nps_detractors), sum(csat_n), sum(csat_top2), sum(csat_sum), "
            "sum(ces_n), sum(ces_agree), sum(ces_sum), sum(stage_entries), sum(touchpoints), "
            "sum(stage_conversions), sum(convert_ms_sum), sum(stage_dropoffs), sum(stage_open), 0, 55 "
            "FROM cx.metrics_minute_committed GROUP BY minute, journey, stage, touchpoint, channel, segment"
        )
        s.query(
            "INSERT INTO cx.compactions SELECT 'retail', 0, 55, 1, sum(records), now(), 4294967303 "
            "FROM cx.live_batches"
        )
        out = s.query(
            "SELECT window, promoters, detractors, nps_n, round(nps, 1), csat_responses FROM cx.rolling_metrics "
            "ORDER BY window", "CSV"
        )
        rows = [l for l in str(out).strip().splitlines() if l]
        if len(rows) != 3 or not all(r.endswith(expected_row) for r in rows):
            failures.append(f"after compaction rolling_metrics returned {rows!r}, expected 3 windows ending {expected_row}")
        # Every view runs on current ClickHouse too (the data above, or none).
        for view in ["funnel_rolling", "channel_flow", "journey_paths", "step_funnel", "off_map_paths",
                     "steps_minute_committed", "stage_funnel", "unmapped_touchpoints", "touchpoint_heat", "case_queue"]:
            try:
                s.query(f"SELECT * FROM cx.{view}", "CSV")
            except Exception as e:  # noqa: BLE001
                failures.append(f"view {view}: {e}")
        window = str(s.query(
            "SELECT window, entered, converted, decided_n FROM cx.funnel_rolling WHERE window = 'all'", "CSV"
        )).strip()
        if window != '"all",1,1,0':
            failures.append(f"funnel_rolling returned {window!r}")
        heat = str(s.query(
            "SELECT stage, touchpoint, touchpoint_count, promoters, csat_answers FROM cx.touchpoint_heat", "CSV"
        )).strip()
        if heat != '"conversion","purchase_completed",4,3,2':
            failures.append(f"touchpoint_heat returned {heat!r}")
        records = str(s.query("SELECT sum(records) FROM cx.committed_records", "CSV")).strip()
        if records != "15":
            failures.append(f"committed_records after compaction is {records}, expected 15")
        s.cleanup() if hasattr(s, "cleanup") else None
    for f in failures:
        print("chdb dialect:", f)
    print(f"test result: {'FAILED' if failures else 'ok'}. {0 if failures else 1} passed; {1 if failures else 0} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
