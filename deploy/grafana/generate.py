#!/usr/bin/env python3
"""Generates the Grafana boards in dashboards/ (plain dashboard JSON, committed).

    python3 deploy/grafana/generate.py

Edit the boards here, never the JSON: tests/grafana/check_panels.py fails when the
committed JSON differs from what this prints, then runs every panel's query.

The SQL runs on ClickHouse 18.16 (the local stack) and current releases, so it avoids
what 18.16 lacks: toStartOfInterval (what the plugin's $__timeInterval expands to; the
buckets are built from $__interval_s instead), window functions, DateTime64, and an alias
that shadows a column inside an aggregate (`sum(x) AS x`). Ratios are always sums of exact
counts over the bucket or range, never averages of per-minute ratios.
"""
import json
import os

CH = {"type": "grafana-clickhouse-datasource", "uid": "cxstream-clickhouse"}
PROM = {"type": "prometheus", "uid": "cxstream-prometheus"}
SCHEMA_VERSION = 39
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dashboards")

# --- SQL fragments ------------------------------------------------------------------------

BUCKET = "toDateTime(intDiv(toUInt32(minute), $__interval_s) * $__interval_s)"


def stage_order(column="stage"):
    """The journey map's order of `column`'s stages (journey_stages keeps every version)."""
    return ("indexOf((SELECT arrayMap(s -> tupleElement(s, 2), arraySort(groupArray((stage_index, stage))))"
            f" FROM cx.journey_stages FINAL WHERE journey = ${{journey:singlequote}}), {column})")


STAGE_ORDER = stage_order()

# The previous period: as long as the selected range, ending where it starts.
PREVIOUS_FROM = "toDateTime(2 * toUInt32($__fromTime) - toUInt32($__toTime))"


def where(*dims, time="minute"):
    """The range, the journey and the multi-value filters as SQL conditions."""
    conds = [f"$__timeFilter({time})" if time else None, "journey = ${journey:singlequote}"]
    conds += [f"{d} IN (${{{d}:singlequote}})" for d in dims]
    return "\n  AND ".join(c for c in conds if c)


def nps_half(p, d, n):
    """Half-width of NPS's 95 % interval: 1.96·sqrt(((p+d)/n − ((p−d)/n)²)/n), in points."""
    return f"196 * sqrt(greatest(0, ({p} + {d}) / {n} - pow(({p} - {d}) / {n}, 2)) / {n})"


def wilson(k, n, bound):
    """A bound of the 95 % Wilson interval of k of n, in percent (README § funnel_rolling)."""
    sign = "-" if bound == "low" else "+"
    return (
        f"100 * ({k} / {n} + 1.9208 / {n} {sign} 1.96 * sqrt({k} / {n} * (1 - {k} / {n}) / {n}"
        f" + 0.9604 / ({n} * {n}))) / (1 + 3.8416 / {n})"
    )


SCORE_COUNTS = """sum(nps_promoters) AS promoters, sum(nps_detractors) AS detractors,
       sum(nps_promoters + nps_passives + nps_detractors) AS nps_answers,
       sum(csat_top2) AS csat_good, sum(csat_sum) AS csat_total, sum(csat_n) AS csat_answers,
       sum(ces_agree) AS ces_good, sum(ces_sum) AS ces_total, sum(ces_n) AS ces_answers"""

# Score columns from the counts above (NULL where nobody answered).
SCORE_COLUMNS = f"""100 * (promoters - detractors) / nullIf(nps_answers, 0) AS "NPS",
       {nps_half("promoters", "detractors", "nullIf(nps_answers, 0)")} AS "NPS ±95 %",
       nps_answers AS "NPS n",
       100 * csat_good / nullIf(csat_answers, 0) AS "CSAT %",
       csat_total / nullIf(csat_answers, 0) AS "CSAT mean",
       csat_answers AS "CSAT n",
       ces_total / nullIf(ces_answers, 0) AS "CES mean",
       100 * ces_good / nullIf(ces_answers, 0) AS "CES % agree",
       ces_answers AS "CES n\""""


def sql(text):
    return "\n".join(line.rstrip() for line in text.strip().splitlines())


# --- Panels -------------------------------------------------------------------------------


def ch(text, timeseries=False, ref="A"):
    return {
        "datasource": CH,
        "editorType": "sql",
        "format": 0 if timeseries else 1,
        "queryType": "timeseries" if timeseries else "table",
        "rawSql": sql(text),
        "refId": ref,
    }


def prom(expr, legend="__auto", ref="A", instant=False):
    t = {"datasource": PROM, "editorMode": "code", "expr": expr, "legendFormat": legend,
         "range": not instant, "instant": instant, "refId": ref}
    if instant:
        t["format"] = "table"
    return t


def override(name, **props):
    return {"matcher": {"id": "byName", "options": name},
            "properties": [{"id": k.replace("__", "."), "value": v} for k, v in props.items()]}


def band(low, high, color):
    """Draws the interval as a shaded band from `low` to `high`, without lines of its own."""
    return [
        override(high, custom__fillBelowTo=low, custom__lineWidth=0, custom__fillOpacity=20,
                 color={"mode": "fixed", "fixedColor": color}),
        override(low, custom__lineWidth=0, custom__hideFrom={"legend": True, "tooltip": False, "viz": False},
                 color={"mode": "fixed", "fixedColor": color}),
    ]


def answers_bars(name):
    return override(name, custom__drawStyle="bars", custom__fillOpacity=30, custom__axisPlacement="right",
                    unit="short", decimals=0, color={"mode": "fixed", "fixedColor": "text"})


def on_right(name, unit="none"):
    return override(name, custom__axisPlacement="right", custom__lineStyle={"fill": "dash", "dash": [10, 10]},
                    unit=unit)


LEGEND = {"displayMode": "list", "placement": "bottom", "showLegend": True, "calcs": []}
TOOLTIP = {"mode": "multi", "sort": "none"}


def timeseries(title, description, targets, unit=None, overrides=(), interval=None, stack=False, bars=False,
               decimals=None, legend_calcs=()):
    custom = {"drawStyle": "bars" if bars else "line", "lineWidth": 1, "fillOpacity": 60 if bars else 0,
              "showPoints": "never", "spanNulls": False, "axisPlacement": "auto",
              "stacking": {"mode": "normal" if stack else "none", "group": "A"}}
    p = {"type": "timeseries", "title": title, "description": description, "targets": targets,
         "fieldConfig": {"defaults": defaults(unit, decimals, custom=custom), "overrides": list(overrides)},
         "options": {"legend": dict(LEGEND, calcs=list(legend_calcs)), "tooltip": TOOLTIP}}
    if interval:
        p["interval"] = interval
    return p


def stat(title, description, targets, unit=None, decimals=None, overrides=(), color="value"):
    return {"type": "stat", "title": title, "description": description, "targets": targets,
            "fieldConfig": {"defaults": defaults(unit, decimals), "overrides": list(overrides)},
            "options": {"graphMode": "none", "colorMode": color, "justifyMode": "auto",
                        "textMode": "value_and_name", "wideLayout": True, "showPercentChange": False,
                        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                        "percentChangeColorMode": "standard", "orientation": "auto"}}


def table(title, description, targets, unit=None, decimals=None, overrides=(), transformations=(),
          heat=False):
    cell = {"type": "color-background", "mode": "gradient"} if heat else {"type": "auto"}
    d = defaults(unit, decimals, custom={"align": "auto", "cellOptions": cell, "inspect": False})
    if heat:
        d["color"] = {"mode": "continuous-BlYlRd"}
    return {"type": "table", "title": title, "description": description, "targets": targets,
            "fieldConfig": {"defaults": d, "overrides": list(overrides)},
            "options": {"frameIndex": 0, "showHeader": True, "cellHeight": "sm",
                        "footer": {"show": False, "reducer": ["sum"], "countRows": False}},
            "transformations": list(transformations)}


def barchart(title, description, targets, unit=None, decimals=None, stack=False, overrides=(),
             horizontal=False):
    custom = {"lineWidth": 1, "fillOpacity": 80, "gradientMode": "none", "axisPlacement": "auto"}
    return {"type": "barchart", "title": title, "description": description, "targets": targets,
            "fieldConfig": {"defaults": defaults(unit, decimals, custom=custom), "overrides": list(overrides)},
            "options": {"orientation": "horizontal" if horizontal else "auto", "xTickLabelRotation": 0,
                        "xTickLabelMaxLength": 0, "stacking": "normal" if stack else "none",
                        "showValue": "auto", "barWidth": 0.8, "groupWidth": 0.7, "legend": LEGEND,
                        "tooltip": TOOLTIP, "fullHighlight": False}}


def defaults(unit=None, decimals=None, custom=None):
    d = {"color": {"mode": "palette-classic"}, "mappings": [],
         "thresholds": {"mode": "absolute", "steps": [{"color": "green", "value": None}]}}
    if unit:
        d["unit"] = unit
    if decimals is not None:
        d["decimals"] = decimals
    if custom:
        d["custom"] = custom
    return d


def matrix(rows, columns, value):
    """Turns (row, column, value) rows into a row × column table: a categorical heat map."""
    return {"id": "groupingToMatrix",
            "options": {"rowField": rows, "columnField": columns, "valueField": value, "emptyValue": "null"}}


# --- Variables ----------------------------------------------------------------------------


def query_var(name, label, query, multi=True, refresh=2):
    v = {"type": "query", "name": name, "label": label, "datasource": CH, "query": sql(query),
         "definition": sql(query), "refresh": refresh, "sort": 0, "multi": multi, "includeAll": multi,
         "hide": 0, "options": [], "regex": "", "skipUrlSync": False}
    if multi:
        v["current"] = {"selected": True, "text": ["All"], "value": ["$__all"]}
    return v


JOURNEY = query_var("journey", "Journey", "SELECT DISTINCT journey FROM cx.journey_stages ORDER BY journey",
                    multi=False, refresh=1)


def dim_var(name, label, order=None):
    return query_var(name, label, f"""
SELECT {name} FROM cx.metrics_minute_committed
WHERE {where()}
GROUP BY {name} ORDER BY {order or name}""")


STAGE = dim_var("stage", "Stage", order=STAGE_ORDER)
TOUCHPOINT = dim_var("touchpoint", "Touchpoint")
CHANNEL = dim_var("channel", "Channel")
SEGMENT = dim_var("segment", "Segment")
BREAKDOWN = {"type": "custom", "name": "breakdown", "label": "Break down by",
             "query": "stage,touchpoint,channel,segment", "multi": False, "includeAll": False, "hide": 0,
             "current": {"selected": True, "text": "stage", "value": "stage"},
             "options": [{"selected": v == "stage", "text": v, "value": v}
                         for v in ["stage", "touchpoint", "channel", "segment"]],
             "skipUrlSync": False}
JOB = {"type": "query", "name": "job", "label": "Job", "datasource": PROM,
       "query": "label_values(cxstream_build_info, job)", "definition": "label_values(cxstream_build_info, job)",
       "refresh": 2, "sort": 1, "multi": True, "includeAll": True, "allValue": ".+", "hide": 0, "options": [],
       "regex": "", "skipUrlSync": False, "current": {"selected": True, "text": ["All"], "value": ["$__all"]}}


# --- Layout -------------------------------------------------------------------------------


# The alerter's incidents over the journey's trends: a region from firing to resolution
# (to now while it fires), with the slice, the figures against the baseline and the
# significance on hover (README § Alerts).
ALERTS_ANNOTATION = {
    "datasource": CH, "enable": True, "hide": False, "iconColor": "red", "name": "cxstream alerts",
    "target": ch("""
SELECT fired_at AS time,
       if(resolved_at_ms > 0, toDateTime(intDiv(resolved_at_ms, 1000)), now()) AS timeEnd,
       concat(toString(kind), ' ', subject, if(touchpoint = '', '', concat(' / ', touchpoint)),
              if(metric = '', '', concat(' ', metric)), ' (', slice, '): ', toString(round(observed, 3)),
              ' against a baseline of ', toString(round(baseline, 3)), ', significance ',
              toString(significance), if(resolved_at_ms > 0, '', ' — firing')) AS text,
       toString(kind) AS tags
FROM cx.alerts_current
WHERE fired_at <= $__toTime
  AND (state != 'RESOLVED' OR resolved_at_ms >= toUInt32($__fromTime) * 1000)
  AND journey = ${journey:singlequote}
ORDER BY time, id""", ref="Anno"),
}


class Board:
    def __init__(self, uid, title, description, variables, tags=(), annotations=()):
        self.uid, self.title, self.description, self.variables = uid, title, description, variables
        self.tags = ["cxstream", *tags]
        self.annotations = list(annotations)
        self.panels, self.x, self.y, self.row_h = [], 0, 0, 0

    def row(self, title):
        self.newline()
        self.panels.append({"type": "row", "title": title, "collapsed": False, "panels": [],
                            "id": len(self.panels) + 1, "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}})
        self.y += 1

    def add(self, panel, w, h):
        if self.x + w > 24:
            self.newline()
        panel = {"id": len(self.panels) + 1, "gridPos": {"h": h, "w": w, "x": self.x, "y": self.y},
                 "datasource": panel["targets"][0]["datasource"], **panel}
        self.panels.append(panel)
        self.x, self.row_h = self.x + w, max(self.row_h, h)

    def newline(self):
        self.y, self.x, self.row_h = self.y + self.row_h, 0, 0

    def json(self):
        return {
            "annotations": {"list": [{
                "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True,
                "hide": True, "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts",
                "type": "dashboard"}, *self.annotations]},
            "description": self.description,
            "editable": True,
            "fiscalYearStartMonth": 0,
            "graphTooltip": 1,
            "id": None,
            "links": [{"title": "cxstream boards", "type": "dashboards", "tags": ["cxstream"], "asDropdown": True,
                       "icon": "external link", "includeVars": False, "keepTime": True, "targetBlank": False,
                       "tooltip": "", "url": ""}],
            "panels": self.panels,
            "refresh": "1m",
            "schemaVersion": SCHEMA_VERSION,
            "tags": self.tags,
            "templating": {"list": self.variables},
            "time": {"from": "now-30d", "to": "now"},
            "timepicker": {},
            "timezone": "utc",
            "title": self.title,
            "uid": self.uid,
            "version": 1,
        }


# --- CX overview --------------------------------------------------------------------------


def cx_overview():
    b = Board("cxstream-cx-overview", "cxstream / CX overview",
              "NPS, CSAT and CES with 95 % intervals and n, from exact per-minute counts, by stage, touchpoint, "
              "channel and segment.", [JOURNEY, STAGE, TOUCHPOINT, CHANNEL, SEGMENT, BREAKDOWN],
              annotations=[ALERTS_ANNOTATION])
    dims = ("stage", "touchpoint", "channel", "segment")
    period = f"""minute >= {PREVIOUS_FROM} AND minute <= $__toTime
  AND {where(*dims, time=None)}"""

    b.row("Selected range beside the previous period (as long, just before it)")
    b.add(stat("NPS", "Promoters − detractors, in points of the answered; ±: 95 % interval. Previous: the "
               "period as long as the selected one, just before it.", [ch(f"""
WITH sumIf(nps_promoters, minute >= $__fromTime) AS p, sumIf(nps_detractors, minute >= $__fromTime) AS d,
     sumIf(nps_promoters + nps_passives + nps_detractors, minute >= $__fromTime) AS n,
     sumIf(nps_promoters, minute < $__fromTime) AS p0, sumIf(nps_detractors, minute < $__fromTime) AS d0,
     sumIf(nps_promoters + nps_passives + nps_detractors, minute < $__fromTime) AS n0
SELECT 100 * (p - d) / nullIf(n, 0) AS "NPS",
       {nps_half("p", "d", "nullIf(n, 0)")} AS "±95 %",
       n AS "answers",
       100 * (p0 - d0) / nullIf(n0, 0) AS "previous period"
FROM cx.metrics_minute_committed
WHERE {period}""")], decimals=1,
               overrides=[override("answers", decimals=0)]), 6, 5)
    b.add(stat("CSAT", "Top-2-box share (answers of 4–5) and the mean score (1–5).", [ch(f"""
WITH sumIf(csat_top2, minute >= $__fromTime) AS k, sumIf(csat_n, minute >= $__fromTime) AS n,
     sumIf(csat_sum, minute >= $__fromTime) AS total,
     sumIf(csat_top2, minute < $__fromTime) AS k0, sumIf(csat_n, minute < $__fromTime) AS n0
SELECT 100 * k / nullIf(n, 0) AS "CSAT %",
       total / nullIf(n, 0) AS "mean",
       n AS "answers",
       100 * k0 / nullIf(n0, 0) AS "previous period %"
FROM cx.metrics_minute_committed
WHERE {period}""")], decimals=1,
               overrides=[override("answers", decimals=0), override("mean", decimals=2)]), 6, 5)
    b.add(stat("CES", "Customer effort (1–7, 7 = it was easy): the mean and the share who agree (5–7).", [ch(f"""
WITH sumIf(ces_sum, minute >= $__fromTime) AS total, sumIf(ces_n, minute >= $__fromTime) AS n,
     sumIf(ces_agree, minute >= $__fromTime) AS k,
     sumIf(ces_sum, minute < $__fromTime) AS total0, sumIf(ces_n, minute < $__fromTime) AS n0
SELECT total / nullIf(n, 0) AS "CES mean",
       100 * k / nullIf(n, 0) AS "% agree",
       n AS "answers",
       total0 / nullIf(n0, 0) AS "previous period"
FROM cx.metrics_minute_committed
WHERE {period}""")], decimals=2,
               overrides=[override("answers", decimals=0), override("% agree", decimals=1)]), 6, 5)
    b.add(stat("Touchpoints and watermark", "Touchpoints and stage entries counted in the range, and the "
               "committed watermark: minutes after it are not known yet (never zero).", [ch(f"""
SELECT sum(touchpoints) AS "touchpoints", sum(stage_entries) AS "stage entries",
       (SELECT max(watermark_ms) FROM cx.committed_watermark WHERE journey = ${{journey:singlequote}})
         AS "watermark"
FROM cx.metrics_minute_committed
WHERE {where(*dims)}""")], decimals=0, color="none",
               overrides=[override("watermark", unit="dateTimeAsIso")]), 6, 5)

    b.row("Trends (each point sums the exact counts of its interval)")
    b.add(timeseries("NPS with its 95 % interval", "NPS per interval with the 95 % interval as a band; bars: "
                     "answers (n).", [ch(f"""
WITH 100 * (p - d) / n AS nps, {nps_half("p", "d", "n")} AS half
SELECT time, nps AS "NPS", nps - half AS "95 % low", nps + half AS "95 % high", n AS "answers"
FROM
(
  SELECT {BUCKET} AS time, sum(nps_promoters) AS p, sum(nps_detractors) AS d,
         sum(nps_promoters + nps_passives + nps_detractors) AS n
  FROM cx.metrics_minute_committed
  WHERE {where(*dims)}
  GROUP BY time
  HAVING n > 0
)
ORDER BY time""", timeseries=True)], decimals=1, interval="1h",
                      overrides=[*band("95 % low", "95 % high", "blue"), answers_bars("answers")]), 8, 9)
    b.add(timeseries("CSAT with its 95 % interval", "Top-2-box share per interval, 95 % Wilson interval as a "
                     "band; dashed: mean score (right axis); n in the tooltip.", [ch(f"""
SELECT time, 100 * k / n AS "CSAT %", {wilson("k", "n", "low")} AS "95 % low",
       {wilson("k", "n", "high")} AS "95 % high", total / n AS "mean (1–5)", n AS "answers"
FROM
(
  SELECT {BUCKET} AS time, sum(csat_top2) AS k, sum(csat_sum) AS total, sum(csat_n) AS n
  FROM cx.metrics_minute_committed
  WHERE {where(*dims)}
  GROUP BY time
  HAVING n > 0
)
ORDER BY time""", timeseries=True)], unit="percent", decimals=1, interval="1h",
                      overrides=[*band("95 % low", "95 % high", "green"), on_right("mean (1–5)"),
                                 override("answers", unit="short", decimals=0,
                                          custom__hideFrom={"legend": False, "tooltip": False, "viz": True})]),
          8, 9)
    b.add(timeseries("CES with its 95 % interval", "Share who agree it was easy (5–7) per interval, 95 % Wilson "
                     "interval as a band; dashed: mean score (right axis; the counts keep no sum of squares, so "
                     "the mean has no interval); n in the tooltip.", [ch(f"""
SELECT time, 100 * k / n AS "CES % agree", {wilson("k", "n", "low")} AS "95 % low",
       {wilson("k", "n", "high")} AS "95 % high", total / n AS "mean (1–7)", n AS "answers"
FROM
(
  SELECT {BUCKET} AS time, sum(ces_agree) AS k, sum(ces_sum) AS total, sum(ces_n) AS n
  FROM cx.metrics_minute_committed
  WHERE {where(*dims)}
  GROUP BY time
  HAVING n > 0
)
ORDER BY time""", timeseries=True)], unit="percent", decimals=1, interval="1h",
                      overrides=[*band("95 % low", "95 % high", "purple"), on_right("mean (1–7)"),
                                 override("answers", unit="short", decimals=0,
                                          custom__hideFrom={"legend": False, "tooltip": False, "viz": True})]),
          8, 9)
    b.add(timeseries("NPS by $breakdown", "NPS per interval and slice (intervals of at least a day: slices "
                     "are small).", [ch(f"""
SELECT time, slice, 100 * (p - d) / n AS nps
FROM
(
  SELECT {BUCKET} AS time, ${{breakdown}} AS slice, sum(nps_promoters) AS p, sum(nps_detractors) AS d,
         sum(nps_promoters + nps_passives + nps_detractors) AS n
  FROM cx.metrics_minute_committed
  WHERE {where(*dims)}
  GROUP BY time, slice
  HAVING n > 0
)
ORDER BY time, slice""", timeseries=True)], decimals=1, interval="1d"), 12, 9)
    b.add(timeseries("Answers by $breakdown", "Survey answers counted per interval and slice (the latest "
                     "answer per respondent and touchpoint).", [ch(f"""
SELECT {BUCKET} AS time, ${{breakdown}} AS slice,
       sum(nps_promoters + nps_passives + nps_detractors + csat_n + ces_n) AS answers
FROM cx.metrics_minute_committed
WHERE {where(*dims)}
GROUP BY time, slice
HAVING answers > 0
ORDER BY time, slice""", timeseries=True)], decimals=0, interval="1d", bars=True, stack=True), 12, 9)

    b.row("By $breakdown (selected range)")
    b.add(table("Scores by $breakdown", "Every score of the range per slice, with n; an empty cell: nobody "
                "answered.", [ch(f"""
SELECT slice AS "$breakdown", touchpoint_count AS "touchpoints", {SCORE_COLUMNS}
FROM
(
  SELECT ${{breakdown}} AS slice, sum(touchpoints) AS touchpoint_count, {SCORE_COUNTS}
  FROM cx.metrics_minute_committed
  WHERE {where(*dims)}
  GROUP BY slice
)
ORDER BY touchpoint_count DESC, slice""")], decimals=1,
                overrides=[override(c, decimals=0) for c in ["touchpoints", "NPS n", "CSAT n", "CES n"]]
                + [override(c, decimals=2) for c in ["CSAT mean", "CES mean"]]), 24, 9)

    b.row("Rolling windows ending at the committed watermark (cx.rolling_metrics; no touchpoint filter)")
    def rolling(keys):
        return f"""
  SELECT {keys}, sum(promoters) AS p, sum(detractors) AS d, sum(nps_n) AS n,
         sum(csat_top2_count) AS csat_good, sum(csat_responses) AS csat_answers,
         sum(if(csat_responses = 0, 0, csat_mean * csat_responses)) AS csat_total,
         sum(ces_responses) AS ces_answers,
         sum(if(ces_responses = 0, 0, ces_mean * ces_responses)) AS ces_total,
         sum(if(ces_responses = 0, 0, ces_agree_pct * ces_responses / 100)) AS ces_good
  FROM cx.rolling_metrics
  WHERE {where("stage", "channel", "segment", time=None)}
  GROUP BY {keys}"""
    scores = f"""100 * (p - d) / nullIf(n, 0) AS "NPS", {nps_half("p", "d", "nullIf(n, 0)")} AS "NPS ±95 %",
       n AS "NPS n", 100 * csat_good / nullIf(csat_answers, 0) AS "CSAT %",
       csat_total / nullIf(csat_answers, 0) AS "CSAT mean", csat_answers AS "CSAT n",
       ces_total / nullIf(ces_answers, 0) AS "CES mean", 100 * ces_good / nullIf(ces_answers, 0) AS "CES % agree",
       ces_answers AS "CES n\""""
    counts = [override(c, decimals=0) for c in ["NPS n", "CSAT n", "CES n"]] + [
        override(c, decimals=2) for c in ["CSAT mean", "CES mean"]]
    b.add(table("Rolling 1 h / 24 h / 7 d", "Sums of the per-minute counts over each window (never averages "
                "of averages), ending at the committed watermark, so a replay answers like live traffic.", [ch(f"""
SELECT window, {scores}
FROM
({rolling("window")}
)
ORDER BY indexOf(['1h', '24h', '7d'], window)""")], decimals=1, overrides=counts), 10, 7)
    b.add(table("Rolling by stage", "The same windows per stage of the journey map.", [ch(f"""
SELECT window, stage, {scores}
FROM
({rolling("window, stage")}
)
ORDER BY indexOf(['1h', '24h', '7d'], window), {STAGE_ORDER}""")], decimals=1, overrides=counts), 14, 7)
    return b


# --- Journey funnel -----------------------------------------------------------------------


def journey_funnel():
    b = Board("cxstream-journey-funnel", "cxstream / Journey funnel",
              "Stage and step conversion beside the journey map's targets and budgets (expectation vs reality), "
              "open entries apart, time to convert, cross-channel flows and AS-IS paths. Rows are by entry time.",
              [JOURNEY, CHANNEL, SEGMENT], annotations=[ALERTS_ANNOTATION])
    dims = ("channel", "segment")
    entry_facts = f"""cx.stage_entries FINAL
WHERE {where(*dims, time="entry_time")}
  AND outcome = 'converted' AND withdrawn = 0"""

    b.row("Stages: the journey map's expectation beside reality (entries in the selected range)")
    b.add(table("Stage funnel", "Entries into each stage in the range and what became of them. Conversion is "
                "over decided entries only (converted + dropped: their deadline is behind the committed "
                "watermark), with its 95 % Wilson interval, beside the map's target; open entries are not yet "
                "known and are never counted as drop-offs. The last stage has no outcome.", [ch(f"""
SELECT stage, entered AS "entered", converted AS "converted", dropped AS "dropped",
       still_open AS "open", decided_n AS "decided",
       100 * decided_converted / nullIf(decided_n, 0) AS "conversion %",
       {wilson("decided_converted", "nullIf(decided_n, 0)", "low")} AS "95 % low",
       {wilson("decided_converted", "nullIf(decided_n, 0)", "high")} AS "95 % high",
       if(outcome = 1, 100 * target, NULL) AS "target %",
       if(outcome = 1, budget_of, NULL) AS "budget",
       convert_ms_sum / nullIf(converted, 0) AS "mean time to convert"
FROM
(
  SELECT stage, any(stage_index) AS stage_order, any(has_outcome) AS outcome,
         any(target_conversion) AS target, any(budget_ms) AS budget_of,
         sum(entries) AS entered, sum(conversions) AS converted, sum(dropoffs) AS dropped,
         sum(open_entries) AS still_open, sum(convert_ms_total) AS convert_ms_sum,
         sumIf(conversions, decided = 1) AS decided_converted,
         sumIf(conversions + dropoffs, decided = 1) AS decided_n
  FROM cx.stage_funnel
  WHERE {where(*dims)}
  GROUP BY stage
)
ORDER BY stage_order""", ref="funnel")], decimals=1,
                overrides=[override(c, decimals=0) for c in ["entered", "converted", "dropped", "open", "decided"]]
                + [override(c, unit="ms", decimals=1) for c in ["budget", "mean time to convert"]]), 24, 7)
    b.add(barchart("Entries per stage: converted, dropped, open", "Each stage's entries split by outcome; "
                   "the last stage's entries have none (reached).", [ch(f"""
SELECT stage, sum(conversions) AS converted, sum(dropoffs) AS dropped, sum(open_entries) AS open,
       sumIf(entries, has_outcome = 0) AS reached
FROM cx.stage_funnel
WHERE {where(*dims)}
GROUP BY stage
ORDER BY any(stage_index)""")], decimals=0, stack=True,
                   overrides=[override("converted", color={"mode": "fixed", "fixedColor": "green"}),
                              override("dropped", color={"mode": "fixed", "fixedColor": "red"}),
                              override("open", color={"mode": "fixed", "fixedColor": "yellow"}),
                              override("reached", color={"mode": "fixed", "fixedColor": "blue"})]), 12, 8)
    b.add(barchart("Conversion vs target", "Conversion of decided entries beside the map's target, per stage "
                   "with an outcome.", [ch(f"""
SELECT stage, 100 * sumIf(conversions, decided = 1) / nullIf(sumIf(conversions + dropoffs, decided = 1), 0)
         AS "conversion %",
       100 * any(target_conversion) AS "target %"
FROM cx.stage_funnel
WHERE {where(*dims)}
  AND has_outcome = 1
GROUP BY stage
ORDER BY any(stage_index)""")], unit="percent", decimals=1,
                   overrides=[override("target %", color={"mode": "fixed", "fixedColor": "text"})]), 12, 8)
    b.add(timeseries("Conversion by stage over time", "Conversion of the entries of each interval whose "
                     "deadlines have passed (decided cohorts); undecided intervals are left out, not zero.", [ch(f"""
SELECT time, stage, 100 * k / n AS conversion
FROM
(
  SELECT {BUCKET} AS time, stage, sumIf(conversions, decided = 1) AS k,
         sumIf(conversions + dropoffs, decided = 1) AS n
  FROM cx.stage_funnel
  WHERE {where(*dims)}
    AND has_outcome = 1
  GROUP BY time, stage
  HAVING n > 0
)
ORDER BY time, stage""", timeseries=True)], unit="percent", decimals=1, interval="1d"), 12, 8)
    b.add(timeseries("Entries by stage", "Stage entries per interval.", [ch(f"""
SELECT {BUCKET} AS time, stage, sum(entries) AS entered
FROM cx.stage_funnel
WHERE {where(*dims)}
GROUP BY time, stage
HAVING entered > 0
ORDER BY time, stage""", timeseries=True)], decimals=0, interval="1h"), 12, 8)

    b.row("Time to convert and cross-channel flows (one fact per converted entry)")
    b.add(table("Time to convert", "Exact quantiles of the time from entering a stage to entering the next "
                "one, over the converted entries of the range, beside the stage's budget.", [ch(f"""
WITH quantilesExact(0.5, 0.9, 0.99)(convert_ms) AS q
SELECT stage, count() AS "converted", q[1] AS "p50", q[2] AS "p90", q[3] AS "p99",
       max(convert_ms) AS "max", any(deadline_ms - entry_time_ms) AS "budget"
FROM {entry_facts}
GROUP BY stage
ORDER BY {STAGE_ORDER}""", ref="convert")], unit="ms", decimals=1,
                overrides=[override("converted", unit="short", decimals=0)]), 12, 8)
    b.add(table("Channel switches", "Converted entries by the channel the stage was entered on (rows) and "
                "the channel the next stage was entered on (columns), all stages.", [ch(f"""
SELECT channel AS entered_on, converted_channel AS converted_on, count() AS conversions
FROM {entry_facts}
GROUP BY entered_on, converted_on
ORDER BY entered_on, converted_on""")], decimals=0, heat=True,
                transformations=[matrix("entered_on", "converted_on", "conversions")]), 12, 8)
    b.add(table("Cross-channel flow by stage", "Per stage: where customers entered it and where they entered "
                "the next stage, with the share of the stage's conversions.", [ch(f"""
SELECT stage, entered_on AS "entered on", converted_on AS "converted on", n AS "conversions",
       100 * n / stage_total AS "share %"
FROM
(
  SELECT stage, channel AS entered_on, converted_channel AS converted_on, count() AS n
  FROM {entry_facts}
  GROUP BY stage, entered_on, converted_on
) AS flows
ANY LEFT JOIN
(
  SELECT stage, count() AS stage_total
  FROM {entry_facts}
  GROUP BY stage
) AS totals USING (stage)
ORDER BY {STAGE_ORDER}, n DESC, entered_on, converted_on""", ref="flow")], decimals=1,
                overrides=[override("conversions", decimals=0)]), 24, 9)

    b.row("Steps: short budgeted hops of the map (e.g. checkout started → purchase completed)")
    b.add(table("Step funnel", "Attempts started in the range and what became of them; conversion over "
                "decided attempts beside the map's target.", [ch(f"""
SELECT step, attempts AS "started", converted_n AS "converted", dropped_n AS "dropped",
       open_n AS "open", decided_n AS "decided",
       100 * decided_converted / nullIf(decided_n, 0) AS "conversion %",
       {wilson("decided_converted", "nullIf(decided_n, 0)", "low")} AS "95 % low",
       {wilson("decided_converted", "nullIf(decided_n, 0)", "high")} AS "95 % high",
       100 * target AS "target %", budget AS "budget",
       convert_ms_sum / nullIf(converted_n, 0) AS "mean time to convert"
FROM
(
  SELECT step, any(step_index) AS step_order, any(target_conversion) AS target, any(budget_ms) AS budget,
         sum(started) AS attempts, sum(converted) AS converted_n, sum(dropped) AS dropped_n,
         sum(still_open) AS open_n, sum(convert_ms_total) AS convert_ms_sum,
         sumIf(converted, decided = 1) AS decided_converted,
         sumIf(converted + dropped, decided = 1) AS decided_n
  FROM cx.step_funnel
  WHERE {where(*dims)}
  GROUP BY step
)
ORDER BY step_order""", ref="steps")], decimals=1,
                overrides=[override(c, decimals=0) for c in ["started", "converted", "dropped", "open", "decided"]]
                + [override(c, unit="ms", decimals=1) for c in ["budget", "mean time to convert"]]), 24, 7)
    b.add(timeseries("Step conversion over time", "Conversion of the decided attempts started in each "
                     "interval, per step: a broken step (checkout in the app) shows within its budget.", [ch(f"""
SELECT time, step, 100 * k / n AS conversion
FROM
(
  SELECT {BUCKET} AS time, step, sumIf(converted, decided = 1) AS k, sumIf(converted + dropped, decided = 1) AS n
  FROM cx.step_funnel
  WHERE {where(*dims)}
  GROUP BY time, step
  HAVING n > 0
)
ORDER BY time, step""", timeseries=True)], unit="percent", decimals=1, interval="6h"), 24, 8)

    b.row("AS-IS and off-map paths (journeys by the day of their first entry; no channel or segment filter)")
    b.add(table("Most common paths and how they end", "The touchpoints through which customers entered each "
                "stage, and whether the journey completed, dropped off (at its last stage) or is still open.",
                [ch("""
SELECT path, stages, ending, sum(journeys) AS journey_count
FROM cx.journey_paths
WHERE $__dateFilter(day)
  AND journey = ${journey:singlequote}
GROUP BY path, stages, ending
ORDER BY journey_count DESC, path
LIMIT 25""")], decimals=0), 16, 9)
    b.add(table("Journey endings by last stage", "Journeys by the last stage they reached and how they ended.",
                [ch(f"""
SELECT last_stage, ending, sum(journeys) AS journey_count
FROM cx.journey_paths
WHERE $__dateFilter(day)
  AND journey = ${{journey:singlequote}}
GROUP BY last_stage, ending
ORDER BY {stage_order("last_stage")}, ending""")],
                decimals=0, heat=True, transformations=[matrix("last_stage", "ending", "journey_count")]), 8, 9)
    b.add(table("Off-map paths", "Touchpoints the journey map does not declare, as journeys meet them in a "
                "stage (in event time; stage none: outside any journey): where customers leave the map.", [ch(f"""
SELECT stage, path, sum(journeys) AS journey_count, sum(off_map_touchpoints) AS visits
FROM cx.off_map_paths
WHERE $__dateFilter(day)
  AND journey = ${{journey:singlequote}}
GROUP BY stage, path
ORDER BY journey_count DESC, {STAGE_ORDER}, path
LIMIT 25""")], decimals=0), 24, 8)
    return b


# --- Touchpoint heat map ------------------------------------------------------------------


def touchpoint_heatmap():
    b = Board("cxstream-touchpoint-heatmap", "cxstream / Touchpoint heat map",
              "Which touchpoints carry volume and how customers score them, by journey stage and channel.",
              [JOURNEY, STAGE, CHANNEL, SEGMENT])
    dims = ("stage", "channel", "segment")

    def cells(across, value, label, having="1"):
        order = STAGE_ORDER if across == "stage" else across
        return ch(f"""
SELECT touchpoint, {across}, {value} AS {label}
FROM cx.metrics_minute_committed
WHERE {where(*dims)}
GROUP BY touchpoint, {across}
HAVING {having}
ORDER BY {order}, touchpoint""")

    nps = "100 * (sum(nps_promoters) - sum(nps_detractors)) / sum(nps_promoters + nps_passives + nps_detractors)"
    b.row("Touchpoint × stage")
    b.add(table("Volume: touchpoint × stage", "Touchpoints counted per touchpoint (rows) and the stage the "
                "customer was in (columns); (off-map): touchpoints the map does not declare.",
                [cells("stage", "sum(touchpoints)", "volume", "volume > 0")], decimals=0, heat=True,
                transformations=[matrix("touchpoint", "stage", "volume")]), 12, 10)
    b.add(table("Mean CSAT: touchpoint × stage", "sum(csat_sum) / sum(csat_n) of the answers attributed to each "
                "cell (1–5); empty: no answer.",
                [cells("stage", "sum(csat_sum) / sum(csat_n)", "csat_mean", "sum(csat_n) > 0")], decimals=2,
                heat=True, transformations=[matrix("touchpoint", "stage", "csat_mean")]), 12, 10)
    b.add(table("NPS: touchpoint × stage", "NPS of the answers attributed to each cell; see the detail table "
                "for n.", [cells("stage", nps, "nps", "sum(nps_promoters + nps_passives + nps_detractors) > 0")],
                decimals=0, heat=True, transformations=[matrix("touchpoint", "stage", "nps")]), 12, 10)
    b.add(table("Mean CES: touchpoint × stage", "sum(ces_sum) / sum(ces_n) (1–7, 7 = easy); empty: no answer.",
                [cells("stage", "sum(ces_sum) / sum(ces_n)", "ces_mean", "sum(ces_n) > 0")], decimals=2,
                heat=True, transformations=[matrix("touchpoint", "stage", "ces_mean")]), 12, 10)

    b.row("Touchpoint × channel")
    b.add(table("Volume: touchpoint × channel", "Touchpoints counted per touchpoint and channel.",
                [cells("channel", "sum(touchpoints)", "volume", "volume > 0")], decimals=0, heat=True,
                transformations=[matrix("touchpoint", "channel", "volume")]), 12, 10)
    b.add(table("Mean CSAT: touchpoint × channel", "Mean CSAT (1–5) per touchpoint and channel.",
                [cells("channel", "sum(csat_sum) / sum(csat_n)", "csat_mean", "sum(csat_n) > 0")], decimals=2,
                heat=True, transformations=[matrix("touchpoint", "channel", "csat_mean")]), 12, 10)

    b.row("Detail")
    b.add(table("Every cell with its n", "Per touchpoint, stage and channel: volume, stage entries and each "
                "score with its number of answers.", [ch(f"""
SELECT touchpoint, stage, channel, touchpoint_count AS "touchpoints",
       entries AS "stage entries", {SCORE_COLUMNS}
FROM
(
  SELECT touchpoint, stage, channel, sum(touchpoints) AS touchpoint_count, sum(stage_entries) AS entries,
         {SCORE_COUNTS}
  FROM cx.metrics_minute_committed
  WHERE {where(*dims)}
  GROUP BY touchpoint, stage, channel
)
ORDER BY touchpoint_count DESC, touchpoint, stage, channel""")], decimals=1,
                overrides=[override(c, decimals=0) for c in ["touchpoints", "stage entries", "NPS n", "CSAT n",
                                                                  "CES n"]]
                + [override(c, decimals=2) for c in ["CSAT mean", "CES mean"]]), 24, 10)
    b.add(timeseries("Touchpoints over time", "Touchpoints per interval and touchpoint.", [ch(f"""
SELECT {BUCKET} AS time, touchpoint, sum(touchpoints) AS volume
FROM cx.metrics_minute_committed
WHERE {where(*dims)}
GROUP BY time, touchpoint
HAVING volume > 0
ORDER BY time, touchpoint""", timeseries=True)], decimals=0, interval="1h", bars=True, stack=True), 24, 9)
    return b


# --- Alerts and cases ----------------------------------------------------------------------


OWNER = query_var("owner", "Owner", """
SELECT DISTINCT owner FROM cx.cases FINAL
WHERE is_case = 1 AND journey = ${journey:singlequote}
ORDER BY owner""")


def alerts_and_cases():
    b = Board("cxstream-alerts-and-cases", "cxstream / Alerts and cases",
              "The alerter's incidents (step, flow and stage drops, score drops, silence) with their slice, figures "
              "against the baseline and significance; and the closed loop: every detractor's answer that counts "
              "is a case for an owner, with its journey context and a follow-up deadline (README § Alerts, "
              "closed-loop cases). Ranges are of the incidents' and the answers' event times.",
              [JOURNEY, OWNER], annotations=[ALERTS_ANNOTATION])
    # Incidents open at some time in the range: fired before its end, resolved after its start.
    incidents = """cx.alerts_current
WHERE fired_at <= $__toTime
  AND (state != 'RESOLVED' OR resolved_at_ms >= toUInt32($__fromTime) * 1000)
  AND journey = ${journey:singlequote}"""
    fired = """cx.alerts_current
WHERE $__timeFilter(fired_at)
  AND journey = ${journey:singlequote}"""
    b.row("Incidents")
    b.add(stat("Firing", "Incidents of the journey firing now (whenever they fired).", [ch("""
SELECT toInt64(countIf(state != 'RESOLVED')) AS firing
FROM cx.alerts_current
WHERE journey = ${journey:singlequote}""")], decimals=0,
               overrides=[override("firing", color={"mode": "fixed", "fixedColor": "red"})]), 6, 4)
    b.add(stat("Incidents in the range", "Incidents open at some time in the range (fired before its end, "
               "resolved after its start or not yet), and how many of them are resolved now.",
               [ch(f"""
SELECT toInt64(count()) AS incidents, toInt64(countIf(state = 'RESOLVED')) AS resolved
FROM {incidents}""")], decimals=0), 6, 4)
    b.add(timeseries("Incidents fired per interval by kind", "When the incidents fired (event time), by kind.",
                     [ch(f"""
SELECT toDateTime(intDiv(toUInt32(fired_at), $__interval_s) * $__interval_s) AS time, toString(kind) AS kind,
       toInt64(count()) AS incidents
FROM {fired}
GROUP BY time, kind
ORDER BY time, kind""", timeseries=True)], decimals=0, interval="1h", bars=True, stack=True), 12, 8)
    b.add(table("Incidents, latest first", "Each incident open in the range, as last changed: what it is "
                "about, the slice whose figures are shown (the most significant) and every slice firing, the observed value against "
                "the baseline (a conversion share, points of a score, touchpoints a minute), its significance "
                "(the chance of evidence this strong without a change) and severity. Times are event times.",
                [ch(f"""
SELECT fired_at AS fired, toString(state) AS state, toString(kind) AS kind, subject, metric, touchpoint, slice,
       arrayStringConcat(firing, ', ') AS "firing slices", observed, baseline, significance,
       toString(severity) AS severity,
       if(resolved_at_ms > 0, toDateTime(intDiv(resolved_at_ms, 1000)), NULL) AS resolved, id
FROM {incidents}
ORDER BY fired DESC, id
LIMIT 500""")], decimals=3,
                overrides=[override("significance", unit="sci")]), 24, 9)
    queue = f"""cx.case_queue
WHERE $__timeFilter(answer_time)
  AND journey = ${{journey:singlequote}}
  AND owner IN (${{owner:singlequote}})"""
    b.row("The case queue")
    for status, color in [("open", "blue"), ("overdue", "red"), ("closed", "green")]:
        b.add(stat(f"{status.capitalize()} cases", f"Cases {status} among the answers of the range "
                   "(overdue: the deadline is behind the journey's committed watermark, in event time).",
                   [ch(f"SELECT toInt64(countIf(status = '{status}')) AS cases FROM {queue}")], decimals=0,
                   overrides=[override("cases", color={"mode": "fixed", "fixedColor": color})]), 8, 4)
    b.add(table("Cases by owner and status", "Per owner: open, overdue and closed cases.", [ch(f"""
SELECT owner, status, toInt64(count()) AS cases
FROM {queue}
GROUP BY owner, status
ORDER BY owner, status""")], decimals=0, heat=True, transformations=[matrix("owner", "status", "cases")]),
          10, 9)
    b.add(timeseries("Cases opened per interval by owner", "Detractors' answers per interval, by the owner "
                     "their case goes to.", [ch(f"""
SELECT toDateTime(intDiv(toUInt32(answer_time), $__interval_s) * $__interval_s) AS time, owner,
       toInt64(count()) AS cases
FROM {queue}
GROUP BY time, owner
ORDER BY time, owner""", timeseries=True)], decimals=0, interval="1h", bars=True, stack=True), 14, 9)
    b.add(table("Overdue cases, most overdue first", "What to call back first: the case's owner and "
                "deadline, the journey context the answer was given in, and the customer's comment.", [ch(f"""
SELECT due, owner, customer_id, metric, score, stage, touchpoint, channel, segment, comment
FROM {queue}
  AND status = 'overdue'
ORDER BY due, customer_id
LIMIT 500""")], decimals=0), 24, 10)
    return b


# --- Pipeline health (Prometheus) ---------------------------------------------------------


def pipeline_health():
    b = Board("cxstream-pipeline-health", "cxstream / Pipeline health",
              "The journey service's own health from its /metrics (Prometheus): throughput, lag, event time, "
              "dead letters, commits to ClickHouse and the consumer group.", [JOB])
    j = '{job=~"$job"}'
    rate = "[$__rate_interval]"

    b.row("Throughput")
    b.add(timeseries("Records read /s by input topic and partition", "Input records read per second "
                     "(touchpoints, answers) per partition: a partition that reads nothing while others do "
                     "is stuck or idle.",
                     [prom(f"sum by (topic, partition) (rate(cxstream_records_consumed_total{j}{rate}))",
                           "{{topic}} {{partition}}")],
                     unit="reqps"), 8, 8)
    b.add(timeseries("Rows written /s by table", "Rows written to ClickHouse per second, by table.",
                     [prom(f"sum by (table) (rate(cxstream_rows_written_total{j}{rate}))", "{{table}}")],
                     unit="rowsps"), 8, 8)
    b.add(timeseries("Duplicates and refused events /s", "Re-deliveries counted once, and valid events not "
                     "applied (late, future: kept in cx.refused_events).",
                     [prom(f"sum(rate(cxstream_duplicates_total{j}{rate}))", "duplicates"),
                      prom(f"sum by (input, reason) (rate(cxstream_refused_events_total{j}{rate}))",
                           "refused {{input}} {{reason}}", ref="B")], unit="reqps"), 8, 8)

    b.row("Lag and event time")
    b.add(timeseries("Consumer lag by topic and partition", "Records not read yet per owned input partition.",
                     [prom(f"sum by (topic, partition) (cxstream_consumer_lag_records{j})",
                           "{{topic}} p{{partition}}")], unit="short"), 12, 8)
    b.add(timeseries("Watermark delay by partition", "Wall clock minus each partition's event-time watermark "
                     "(large during a replay, by design; growing while records arrive: a stalled input).",
                     [prom(f"max by (partition) (time() - cxstream_watermark_seconds{j})", "p{{partition}}")],
                     unit="s"), 12, 8)

    b.row("Dead letters")
    b.add(timeseries("Dead letters /s by reason", "Records sent to the dead-letter topic, by typed reason.",
                     [prom(f"sum by (reason) (rate(cxstream_dlq_records_total{j}{rate}))", "{{reason}}")],
                     unit="reqps"), 12, 8)
    b.add(stat("Dead-letter share (10 min)", "Share of input records dead-lettered (recording rule "
               "cxstream:dlq_ratio:rate10m).", [prom(f"sum(cxstream:dlq_ratio:rate10m{j})", "share")],
               unit="percentunit", decimals=2), 4, 8)
    b.add(table("Dead letters in the range", "Dead letters per reason over the selected range.",
                [prom(f"sum by (reason) (increase(cxstream_dlq_records_total{j}[$__range]))", "{{reason}}",
                      instant=True)], decimals=0), 8, 8)

    b.row("Commits to ClickHouse")
    b.add(timeseries("Batch commit latency", "Time to write one batch (facts, aggregates, state, marker).",
                     [prom(f"histogram_quantile(0.5, sum by (le) (rate(cxstream_commit_duration_seconds_bucket{j}"
                           f"{rate})))", "p50"),
                      prom(f"histogram_quantile(0.99, sum by (le) (rate(cxstream_commit_duration_seconds_bucket{j}"
                           f"{rate})))", "p99", ref="B")], unit="s"), 8, 8)
    b.add(timeseries("Batches committed /s", "Batches durably committed to ClickHouse.",
                     [prom(f"sum(rate(cxstream_batches_committed_total{j}{rate}))", "batches")], unit="reqps"),
          8, 8)
    b.add(timeseries("ClickHouse commit errors", "Failed batch commits (retried with back-off; nothing is "
                     "lost, but figures stop moving).",
                     [prom(f"sum(increase(cxstream_commit_errors_total{j}{rate}))", "errors")], unit="short",
                     bars=True), 8, 8)
    b.add(stat("Since the last commit", "Wall-clock time since the last batch committed (any instance).",
               [prom(f"time() - max(cxstream_last_commit_timestamp_seconds{j})", "since last commit")],
               unit="s", decimals=0), 8, 6)
    b.add(stat("Watermark delay (max)", "Recording rule cxstream:watermark_delay_seconds:max.",
               [prom(f"max(cxstream:watermark_delay_seconds:max{j})", "watermark delay")], unit="s",
               decimals=0), 8, 6)
    b.add(timeseries("Compactions by result", "Compactions of committed batches (failed ones are retried and "
                     "change no figure).",
                     [prom(f"sum by (result) (increase(cxstream_compactions_total{j}{rate}))", "{{result}}")],
                     unit="short", bars=True), 8, 6)

    b.row("Consumer group and instances")
    b.add(timeseries("Assigned partitions per instance", "Input partitions each instance owns; a step is a "
                     "rebalance.", [prom(f"sum by (instance) (cxstream_assigned_partitions{j})", "{{instance}}")],
                     unit="short"), 8, 8)
    b.add(timeseries("Rebalances", "Partitions assigned to and revoked from each instance per interval by "
                     "the consumer group.",
                     [prom(f"sum by (instance, change) (increase(cxstream_rebalances_total{j}{rate}))",
                           "{{instance}} {{change}}")],
                     unit="short", bars=True), 8, 8)
    b.add(timeseries("Customers tracked in memory", "Customers with journey state held by each instance, "
                     "and idle journeys let go from memory (read back from ClickHouse when needed).",
                     [prom(f"sum by (instance) (cxstream_tracked_customers{j})", "{{instance}} in memory"),
                      prom(f"sum by (instance) (cxstream_journeys_let_go{j})", "{{instance}} let go")],
                     unit="short"),
          8, 8)
    b.add(timeseries("Journeys read back", "Journeys let go and read back from ClickHouse per second: "
                     "customers who came back, and deadlines that came.",
                     [prom(f"sum by (instance) (rate(cxstream_journeys_read_back_total{j}{rate}))", "{{instance}}")],
                     unit="ops"),
          8, 8)
    b.add(table("Running versions", "Instances per cxstream version.",
                [prom(f"count by (version) (cxstream_build_info{j})", "{{version}}", instant=True)], decimals=0),
          8, 5)
    return b


BOARDS = {
    "cx-overview.json": cx_overview,
    "journey-funnel.json": journey_funnel,
    "touchpoint-heatmap.json": touchpoint_heatmap,
    "pipeline-health.json": pipeline_health,
    "alerts-and-cases.json": alerts_and_cases,
}


def render():
    """Every board's file name and its JSON text, exactly as committed."""
    return {name: json.dumps(make().json(), indent=2, ensure_ascii=False) + "\n" for name, make in BOARDS.items()}


def main():
    os.makedirs(OUT, exist_ok=True)
    for name, text in render().items():
        with open(os.path.join(OUT, name), "w", encoding="utf-8") as f:
            f.write(text)
        print(os.path.join("deploy/grafana/dashboards", name))


if __name__ == "__main__":
    main()
