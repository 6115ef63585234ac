-- Rolling NPS / CSAT / CES over 1 h, 24 h and 7 d by journey, stage, channel and segment,
-- summed from exact per-minute counts (never averages of averages). "Now" is the latest
-- minute with data (event time), so a replayed week answers like live traffic.
-- Group further (e.g. by stage only) by summing the count columns of this view.

CREATE VIEW IF NOT EXISTS {db}.rolling_metrics AS
SELECT
    window,
    journey,
    stage,
    channel,
    segment,
    sum(nps_promoters) AS promoters,
    sum(nps_passives) AS passives,
    sum(nps_detractors) AS detractors,
    promoters + passives + detractors AS nps_n,
    if(nps_n = 0, nan, 100 * (promoters - detractors) / nps_n) AS nps,
    if(nps_n = 0, nan, 196 * sqrt(((promoters + detractors) / nps_n - pow((promoters - detractors) / nps_n, 2)) / nps_n)) AS nps_ci95,
    sum(csat_n) AS csat_responses,
    sum(csat_top2) AS csat_top2_count,
    if(csat_responses = 0, nan, 100 * csat_top2_count / csat_responses) AS csat,
    if(csat_responses = 0, nan, sum(csat_sum) / csat_responses) AS csat_mean,
    sum(ces_n) AS ces_responses,
    if(ces_responses = 0, nan, sum(ces_sum) / ces_responses) AS ces_mean,
    if(ces_responses = 0, nan, 100 * sum(ces_agree) / ces_responses) AS ces_agree_pct
FROM
(
    SELECT *, arrayJoin([('1h', 60), ('24h', 1440), ('7d', 10080)]) AS w
    FROM {db}.metrics_minute_committed
)
WHERE minute > (SELECT max(minute) FROM {db}.metrics_minute_committed) - tupleElement(w, 2) * 60
GROUP BY tupleElement(w, 1) AS window, journey, stage, channel, segment;
