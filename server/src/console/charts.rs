//! Charts of the console's Telemetry page, drawn on the server as inline
//! SVG (no script, no outside library): stacked bars of syncs over time,
//! horizontal bars of failures by type, and lines of sync duration
//! percentiles over time. Every value carries a `<title>` tooltip and every
//! chart a text summary for screen readers.

use std::fmt::Write as _;

use crate::console::html::esc;
use crate::console::telemetry::{FailureTypeCount, TelemetryBucket};

const W: f64 = 760.0;
const H: f64 = 260.0;
const LEFT: f64 = 56.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 16.0;
const BOTTOM: f64 = 40.0;

/// A round upper bound for an axis and its tick step.
fn nice_max(max: f64) -> (f64, f64) {
    if max <= 0.0 || !max.is_finite() {
        return (1.0, 0.25);
    }
    let magnitude = 10f64.powf(max.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        let top = m * magnitude;
        if top >= max {
            return (top, top / 4.0);
        }
    }
    (10.0 * magnitude, 2.5 * magnitude)
}

fn fmt_num(v: f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{}", v.round() as i64)
    } else {
        format!("{v:.1}")
    }
}

/// A bucket start shown short: `MM-DD HH:MM` from an ISO date-time.
fn short_time(iso: &str) -> String {
    match (iso.get(5..10), iso.get(11..16)) {
        (Some(d), Some(t)) => format!("{d} {t}"),
        _ => iso.to_owned(),
    }
}

fn open(class: &str, label: &str) -> String {
    format!(
        "<svg class=\"chart {class}\" viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"{}\" xmlns=\"http://www.w3.org/2000/svg\">",
        esc(label)
    )
}

fn y_axis(out: &mut String, max: f64, step: f64, unit: &str) {
    let plot_h = H - TOP - BOTTOM;
    let mut v = 0.0;
    while v <= max + 1e-9 {
        let y = TOP + plot_h - v / max * plot_h;
        let _ = write!(
            out,
            "<line class=\"grid\" x1=\"{LEFT}\" x2=\"{x2}\" y1=\"{y:.1}\" y2=\"{y:.1}\"/><text class=\"tick\" x=\"{tx}\" y=\"{ty:.1}\" text-anchor=\"end\">{}{}</text>",
            fmt_num(v),
            esc(unit),
            x2 = W - RIGHT,
            tx = LEFT - 6.0,
            ty = y + 4.0,
        );
        v += step;
    }
}

fn x_labels(out: &mut String, buckets: &[TelemetryBucket], x_of: impl Fn(usize) -> f64) {
    let every = buckets.len().div_ceil(8).max(1);
    for (i, b) in buckets.iter().enumerate() {
        if i % every == 0 || i + 1 == buckets.len() {
            let _ = write!(
                out,
                "<text class=\"tick\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
                x_of(i),
                H - BOTTOM + 18.0,
                esc(&short_time(&b.start))
            );
        }
    }
}

/// Syncs per time bucket as stacked bars: succeeded below, failed above.
pub fn sync_counts(buckets: &[TelemetryBucket]) -> String {
    let max = buckets.iter().map(|b| b.syncs).max().unwrap_or(0) as f64;
    let (top, step) = nice_max(max);
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    let slot = plot_w / buckets.len().max(1) as f64;
    let bar = (slot * 0.7).max(1.0);
    let total: u64 = buckets.iter().map(|b| b.syncs).sum();
    let failed: u64 = buckets.iter().map(|b| b.failed.min(b.syncs)).sum();
    let mut out = open(
        "sync-counts",
        &format!("Syncs over time: {total} syncs, {failed} failed"),
    );
    y_axis(&mut out, top, step, "");
    for (i, b) in buckets.iter().enumerate() {
        let failed = b.failed.min(b.syncs);
        let conflicts = b.with_conflicts.min(b.syncs - failed);
        let ok = b.syncs - failed - conflicts;
        let x = LEFT + slot * i as f64 + (slot - bar) / 2.0;
        let h_ok = ok as f64 / top * plot_h;
        let h_conflicts = conflicts as f64 / top * plot_h;
        let h_failed = failed as f64 / top * plot_h;
        let base = TOP + plot_h;
        let _ = write!(
            out,
            "<g class=\"bar\"><title>{}: {} syncs, {} with conflicts, {} failed</title><rect class=\"ok\" x=\"{x:.1}\" y=\"{:.1}\" width=\"{bar:.1}\" height=\"{h_ok:.1}\"/><rect class=\"conflicts\" x=\"{x:.1}\" y=\"{:.1}\" width=\"{bar:.1}\" height=\"{h_conflicts:.1}\"/><rect class=\"failed\" x=\"{x:.1}\" y=\"{:.1}\" width=\"{bar:.1}\" height=\"{h_failed:.1}\"/></g>",
            esc(&b.start),
            b.syncs,
            conflicts,
            failed,
            base - h_ok,
            base - h_ok - h_conflicts,
            base - h_ok - h_conflicts - h_failed,
        );
    }
    x_labels(&mut out, buckets, |i| LEFT + slot * i as f64 + slot / 2.0);
    out.push_str("</svg>");
    out
}

/// Failed syncs by failure type, as horizontal bars with their share of
/// all syncs.
pub fn failures_by_type(failures: &[FailureTypeCount], total_syncs: u64) -> String {
    let rows = failures.len().max(1) as f64;
    let row_h = 28.0;
    let h = TOP + rows * row_h + 8.0;
    let label_w = 200.0;
    let plot_w = W - label_w - 120.0;
    let max = failures.iter().map(|f| f.count).max().unwrap_or(0).max(1) as f64;
    let total_failed: u64 = failures.iter().map(|f| f.count).sum();
    let mut out = format!(
        "<svg class=\"chart failures\" viewBox=\"0 0 {W} {h}\" role=\"img\" aria-label=\"{}\" xmlns=\"http://www.w3.org/2000/svg\">",
        esc(&format!(
            "Failures by type: {total_failed} failed syncs of {total_syncs}"
        ))
    );
    for (i, f) in failures.iter().enumerate() {
        let y = TOP + i as f64 * row_h;
        let w = (f.count as f64 / max * plot_w).max(1.0);
        let rate = if total_syncs > 0 {
            f.count as f64 * 100.0 / total_syncs as f64
        } else {
            0.0
        };
        let _ = write!(
            out,
            "<g class=\"bar\"><title>{name}: {count} failed syncs ({rate:.1}% of syncs)</title><text class=\"label\" x=\"{lx}\" y=\"{ty:.1}\" text-anchor=\"end\">{name}</text><rect class=\"failed\" x=\"{label_w}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{bh}\"/><text class=\"value\" x=\"{vx:.1}\" y=\"{ty:.1}\">{count} · {rate:.1}%</text></g>",
            name = esc(&f.failure_type),
            count = f.count,
            lx = label_w - 8.0,
            ty = y + 15.0,
            bh = row_h - 8.0,
            vx = label_w + w + 6.0,
        );
    }
    out.push_str("</svg>");
    out
}

/// A percentile line: label, CSS class, and how to read it from a bucket.
type Series = (
    &'static str,
    &'static str,
    fn(&TelemetryBucket) -> Option<f64>,
);

/// Sync duration percentiles (p50, p90, p99) per time bucket as lines.
pub fn duration_percentiles(buckets: &[TelemetryBucket]) -> String {
    let series: [Series; 3] = [
        ("p50", "p50", |b| b.duration_ms_p50),
        ("p90", "p90", |b| b.duration_ms_p90),
        ("p99", "p99", |b| b.duration_ms_p99),
    ];
    let max = buckets
        .iter()
        .flat_map(|b| [b.duration_ms_p50, b.duration_ms_p90, b.duration_ms_p99])
        .flatten()
        .fold(0.0f64, f64::max);
    let (top, step) = nice_max(max);
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    let n = buckets.len();
    let x_of = |i: usize| {
        if n <= 1 {
            LEFT + plot_w / 2.0
        } else {
            LEFT + plot_w * i as f64 / (n - 1) as f64
        }
    };
    let y_of = |v: f64| TOP + plot_h - v / top * plot_h;
    let mut out = open(
        "durations",
        "Sync duration percentiles over time (milliseconds)",
    );
    y_axis(&mut out, top, step, " ms");
    for (class, name, get) in series {
        let mut path = String::new();
        let mut dots = String::new();
        for (i, b) in buckets.iter().enumerate() {
            if let Some(v) = get(b) {
                let cmd = if path.is_empty() { 'M' } else { 'L' };
                let _ = write!(path, "{cmd}{:.1},{:.1} ", x_of(i), y_of(v));
                let _ = write!(
                    dots,
                    "<circle class=\"{class}\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"3.5\"><title>{} {name}: {} ms</title></circle>",
                    x_of(i),
                    y_of(v),
                    esc(&b.start),
                    fmt_num(v)
                );
            }
        }
        if !path.is_empty() {
            let _ = write!(
                out,
                "<path class=\"line {class}\" d=\"{}\"/>{dots}",
                path.trim_end()
            );
        }
    }
    x_labels(&mut out, buckets, x_of);
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(start: &str, syncs: u64, failed: u64, p50: Option<f64>) -> TelemetryBucket {
        TelemetryBucket {
            start: start.into(),
            syncs,
            failed,
            with_conflicts: 0,
            duration_ms_p50: p50,
            duration_ms_p90: p50.map(|v| v * 2.0),
            duration_ms_p99: p50.map(|v| v * 3.0),
        }
    }

    #[test]
    fn sync_counts_draws_a_bar_per_bucket_with_tooltips() {
        let b = [
            bucket("2026-11-29T01:00:00Z", 10, 2, Some(100.0)),
            bucket("2026-11-29T02:00:00Z", 4, 0, None),
        ];
        let svg = sync_counts(&b);
        assert_eq!(svg.matches("<g class=\"bar\">").count(), 2);
        assert!(svg.contains("2026-11-29T01:00:00Z: 10 syncs, 0 with conflicts, 2 failed"));
        assert!(svg.contains("14 syncs, 2 failed"));
        assert!(svg.contains("11-29 01:00"));
    }

    #[test]
    fn durations_skip_missing_points_and_scale_to_the_largest() {
        let b = [
            bucket("2026-11-29T01:00:00Z", 10, 2, Some(100.0)),
            bucket("2026-11-29T02:00:00Z", 4, 0, None),
            bucket("2026-11-29T03:00:00Z", 4, 0, Some(250.0)),
        ];
        let svg = duration_percentiles(&b);
        assert_eq!(svg.matches("<path class=\"line").count(), 3);
        assert_eq!(svg.matches("<circle").count(), 6);
        // p99 of the last bucket is 750 ms: the axis reaches 1000.
        assert!(svg.contains(">1000 ms<"));
    }

    #[test]
    fn failures_show_share_of_all_syncs_and_escape_names() {
        let f = [FailureTypeCount {
            failure_type: "<network>".into(),
            count: 5,
        }];
        let svg = failures_by_type(&f, 20);
        assert!(svg.contains("&lt;network&gt;: 5 failed syncs (25.0% of syncs)"));
        assert!(!svg.contains("<network>"));
    }

    #[test]
    fn nice_axis_bounds() {
        assert_eq!(nice_max(0.0), (1.0, 0.25));
        assert_eq!(nice_max(7.0), (10.0, 2.5));
        assert_eq!(nice_max(120.0), (200.0, 50.0));
    }
}
