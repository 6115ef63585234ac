//! The HTML report's charts, drawn by plotters as inline SVG: score trends with their 95 %
//! interval as a band, and the funnel's decided conversion beside the map's target.

use anyhow::{anyhow, Result};
use plotters::prelude::*;

use super::figures::FunnelRow;

/// A day's value and its 95 % interval (value, low, high).
type Interval = (f64, f64, f64);
/// A day's value with its interval; `None` where the day has no answers.
pub type Point = Option<Interval>;
/// Consecutive days with a value, each with its x.
type Run = Vec<(f64, Interval)>;

const WIDTH: u32 = 560;
const BAND: RGBColor = RGBColor(31, 119, 180);

/// `values` per day (labels `days`) as a line inside its interval band, on `y`.
pub fn trend(title: &str, days: &[String], values: &[Point], y: (f64, f64)) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, 240)).into_drawing_area();
        root.fill(&WHITE).map_err(drawing)?;
        let last = days.len().saturating_sub(1).max(1) as f64;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 15))
            .margin(8)
            .margin_right(24)
            .x_label_area_size(28)
            .y_label_area_size(40)
            .build_cartesian_2d(0f64..last, y.0..y.1)
            .map_err(drawing)?;
        // Whole days only: a tick between two days has no label.
        let label = |x: &f64| {
            if (x - x.round()).abs() > 0.01 || *x < 0.0 {
                return String::new();
            }
            days.get(x.round() as usize)
                .map_or(String::new(), |d| d.get(5..).unwrap_or(d).to_string())
        };
        chart
            .configure_mesh()
            .x_labels(days.len().clamp(2, 8))
            .x_label_formatter(&label)
            .light_line_style(WHITE)
            .draw()
            .map_err(drawing)?;
        // Days without answers break the line and the band instead of bridging them.
        for run in runs(values) {
            let upper = run.iter().map(|&(x, (_, _, hi))| (x, hi));
            let lower = run.iter().rev().map(|&(x, (_, lo, _))| (x, lo));
            chart
                .draw_series(std::iter::once(Polygon::new(
                    upper.chain(lower).collect::<Vec<_>>(),
                    BAND.mix(0.2),
                )))
                .map_err(drawing)?;
            chart
                .draw_series(LineSeries::new(
                    run.iter().map(|&(x, (v, _, _))| (x, v)),
                    BAND.stroke_width(2),
                ))
                .map_err(drawing)?;
            // A day between days without answers is a point, not an invisible line.
            chart
                .draw_series(
                    run.iter()
                        .map(|&(x, (v, _, _))| Circle::new((x, v), 2, BAND.filled())),
                )
                .map_err(drawing)?;
        }
        root.present().map_err(drawing)?;
    }
    Ok(svg)
}

fn runs(values: &[Point]) -> Vec<Run> {
    let mut out: Vec<Run> = vec![Vec::new()];
    for (i, v) in values.iter().enumerate() {
        match v {
            Some(p) => out.last_mut().map_or((), |r| r.push((i as f64, *p))),
            None => out.push(Vec::new()),
        }
    }
    out.retain(|r| !r.is_empty());
    out
}

/// Per stage or step: the decided conversion (a bar, with its 95 % Wilson interval) and
/// the map's target (a red tick). Rows with nothing decided yet have no bar.
pub fn funnel(title: &str, rows: &[FunnelRow]) -> Result<String> {
    let mut svg = String::new();
    {
        let height = 60 + 28 * rows.len().max(1) as u32;
        let root = SVGBackend::with_string(&mut svg, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE).map_err(drawing)?;
        let n = rows.len().max(1) as f64;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 15))
            .margin(8)
            .x_label_area_size(24)
            .y_label_area_size(170)
            .build_cartesian_2d(0f64..100f64, 0f64..n)
            .map_err(drawing)?;
        let label = |y: &f64| {
            let i = (n - y - 0.5).round();
            if (n - y - 0.5 - i).abs() > 0.01 || i < 0.0 {
                return String::new();
            }
            rows.get(i as usize)
                .map_or(String::new(), |r| r.name.clone())
        };
        chart
            .configure_mesh()
            .y_labels(2 * rows.len() + 1)
            .y_label_formatter(&label)
            .x_label_formatter(&|x| format!("{x:.0}%"))
            .disable_y_mesh()
            .draw()
            .map_err(drawing)?;
        for (i, r) in rows.iter().enumerate() {
            let top = n - i as f64 - 0.2;
            let bottom = n - i as f64 - 0.8;
            if let Some(w) = cxstream_core::Proportion::wilson95(r.decided_converted, r.decided) {
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(0.0, bottom), (100.0 * w.p, top)],
                        BAND.mix(0.7).filled(),
                    )))
                    .map_err(drawing)?;
                let mid = (top + bottom) / 2.0;
                chart
                    .draw_series(std::iter::once(PathElement::new(
                        vec![(100.0 * w.low, mid), (100.0 * w.high, mid)],
                        BLACK.stroke_width(1),
                    )))
                    .map_err(drawing)?;
            }
            let t = 100.0 * r.target;
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(t, bottom - 0.1), (t, top + 0.1)],
                    RED.stroke_width(3),
                )))
                .map_err(drawing)?;
        }
        root.present().map_err(drawing)?;
    }
    Ok(svg)
}

fn drawing<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("drawing a chart: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trend_is_svg_with_a_band_per_run_of_days() {
        let days: Vec<String> = (1..=4).map(|d| format!("2026-11-0{d}")).collect();
        let values = [
            Some((10.0, 5.0, 15.0)),
            Some((12.0, 6.0, 18.0)),
            None,
            Some((20.0, 10.0, 30.0)),
        ];
        let svg = trend("NPS", &days, &values, (-100.0, 100.0)).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polygon").count(), 2, "{svg}");
        assert!(svg.contains("11-02"), "day labels");
    }

    #[test]
    fn a_funnel_has_a_bar_for_each_decided_row_and_every_target() {
        let row = |name: &str, decided| FunnelRow {
            name: name.into(),
            entries: 100,
            converted: 40,
            dropped: 10,
            open: 50,
            decided_converted: decided / 2,
            decided,
            target: 0.6,
            convert_ms: None,
        };
        let svg = funnel("Stages", &[row("awareness", 50), row("retention", 0)]).unwrap();
        assert!(
            svg.contains("awareness") && svg.contains("retention"),
            "{svg}"
        );
        assert!(svg.contains("<svg"));
    }
}
