//! Charts of the console's Telemetry page, drawn on the server as inline
//! SVG (no script, no outside library): stacked bars of syncs over time,
//! horizontal bars of failures by type, and lines of sync duration
//! percentiles over time. Every value carries a `<title>` tooltip and every
//! chart a text summary for screen readers. Maud templates: every text is
//! escaped by the template engine (failure types come from devices).

use maud::{Markup, html};
use serde::{Deserialize, Serialize};

/// Syncs in one time bucket.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TelemetryBucket {
    /// Start of the bucket, UTC (`YYYY-MM-DDTHH:MM:SSZ`).
    pub start: String,
    /// Syncs that ended in the bucket.
    pub syncs: u64,
    /// Of those, syncs that failed.
    pub failed: u64,
    /// Of those, syncs that completed but left conflicts or rejected
    /// changes.
    #[serde(default)]
    pub with_conflicts: u64,
    /// Median sync duration in milliseconds, when any sync ended.
    pub duration_ms_p50: Option<f64>,
    /// 90th percentile of sync duration in milliseconds.
    pub duration_ms_p90: Option<f64>,
    /// 99th percentile of sync duration in milliseconds.
    pub duration_ms_p99: Option<f64>,
}

/// Failed syncs of one failure type (for example `network_unavailable`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FailureTypeCount {
    pub failure_type: String,
    pub count: u64,
}

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

/// A coordinate as the charts write it.
fn c(v: f64) -> String {
    format!("{v:.1}")
}

/// A bucket start shown short: `MM-DD HH:MM` from an ISO date-time.
fn short_time(iso: &str) -> String {
    match (iso.get(5..10), iso.get(11..16)) {
        (Some(d), Some(t)) => format!("{d} {t}"),
        _ => iso.to_owned(),
    }
}

/// An SVG chart of the standard size around `content`.
fn chart(class: &str, label: &str, content: Markup) -> String {
    html! {
        svg class={ "chart " (class) } viewBox={ "0 0 " (W) " " (H) } role="img" aria-label=(label) xmlns="http://www.w3.org/2000/svg" {
            (content)
        }
    }
    .into_string()
}

fn y_axis(max: f64, step: f64, unit: &str) -> Markup {
    let plot_h = H - TOP - BOTTOM;
    let mut ticks = Vec::new();
    let mut v = 0.0;
    while v <= max + 1e-9 {
        ticks.push((v, TOP + plot_h - v / max * plot_h));
        v += step;
    }
    html! {
        @for (v, y) in ticks {
            line.grid x1=(LEFT) x2=(W - RIGHT) y1=(c(y)) y2=(c(y)) {}
            text.tick x=(LEFT - 6.0) y=(c(y + 4.0)) text-anchor="end" { (fmt_num(v)) (unit) }
        }
    }
}

fn x_labels(buckets: &[TelemetryBucket], x_of: impl Fn(usize) -> f64) -> Markup {
    let every = buckets.len().div_ceil(8).max(1);
    html! {
        @for (i, b) in buckets.iter().enumerate() {
            @if i % every == 0 || i + 1 == buckets.len() {
                text.tick x=(c(x_of(i))) y=(c(H - BOTTOM + 18.0)) text-anchor="middle" { (short_time(&b.start)) }
            }
        }
    }
}

/// Syncs per time bucket as stacked bars: succeeded below, then ended
/// with conflicts, failed above.
pub fn sync_counts(buckets: &[TelemetryBucket]) -> String {
    let max = buckets.iter().map(|b| b.syncs).max().unwrap_or(0) as f64;
    let (top, step) = nice_max(max);
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    let slot = plot_w / buckets.len().max(1) as f64;
    let bar = (slot * 0.7).max(1.0);
    let total: u64 = buckets.iter().map(|b| b.syncs).sum();
    let failed: u64 = buckets.iter().map(|b| b.failed.min(b.syncs)).sum();
    let base = TOP + plot_h;
    let content = html! {
        (y_axis(top, step, ""))
        @for (i, b) in buckets.iter().enumerate() {
            @let failed = b.failed.min(b.syncs);
            @let conflicts = b.with_conflicts.min(b.syncs - failed);
            @let ok = b.syncs - failed - conflicts;
            @let x = c(LEFT + slot * i as f64 + (slot - bar) / 2.0);
            @let h_ok = ok as f64 / top * plot_h;
            @let h_conflicts = conflicts as f64 / top * plot_h;
            @let h_failed = failed as f64 / top * plot_h;
            g.bar {
                title { (b.start) ": " (b.syncs) " syncs, " (conflicts) " with conflicts, " (failed) " failed" }
                rect.ok x=(x) y=(c(base - h_ok)) width=(c(bar)) height=(c(h_ok)) {}
                rect.conflicts x=(x) y=(c(base - h_ok - h_conflicts)) width=(c(bar)) height=(c(h_conflicts)) {}
                rect.failed x=(x) y=(c(base - h_ok - h_conflicts - h_failed)) width=(c(bar)) height=(c(h_failed)) {}
            }
        }
        (x_labels(buckets, |i| LEFT + slot * i as f64 + slot / 2.0))
    };
    chart(
        "sync-counts",
        &format!("Syncs over time: {total} syncs, {failed} failed"),
        content,
    )
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
    html! {
        svg.chart.failures viewBox={ "0 0 " (W) " " (h) } role="img"
            aria-label={ "Failures by type: " (total_failed) " failed syncs of " (total_syncs) }
            xmlns="http://www.w3.org/2000/svg" {
            @for (i, f) in failures.iter().enumerate() {
                @let y = TOP + i as f64 * row_h;
                @let w = (f.count as f64 / max * plot_w).max(1.0);
                @let rate = if total_syncs > 0 { f.count as f64 * 100.0 / total_syncs as f64 } else { 0.0 };
                @let rate = format!("{rate:.1}%");
                g.bar {
                    title { (f.failure_type) ": " (f.count) " failed syncs (" (rate) " of syncs)" }
                    text.label x=(label_w - 8.0) y=(c(y + 15.0)) text-anchor="end" { (f.failure_type) }
                    rect.failed x=(label_w) y=(c(y)) width=(c(w)) height=(row_h - 8.0) {}
                    text.value x=(c(label_w + w + 6.0)) y=(c(y + 15.0)) { (f.count) " · " (rate) }
                }
            }
        }
    }
    .into_string()
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
    let content = html! {
        (y_axis(top, step, " ms"))
        @for (class, name, get) in series {
            @let points: Vec<(usize, &TelemetryBucket, f64)> = buckets
                .iter()
                .enumerate()
                .filter_map(|(i, b)| get(b).map(|v| (i, b, v)))
                .collect();
            @if !points.is_empty() {
                @let d = points
                    .iter()
                    .enumerate()
                    .map(|(k, (i, _, v))| format!("{}{},{}", if k == 0 { 'M' } else { 'L' }, c(x_of(*i)), c(y_of(*v))))
                    .collect::<Vec<_>>()
                    .join(" ");
                path class={ "line " (class) } d=(d) {}
                @for (i, b, v) in &points {
                    circle class=(class) cx=(c(x_of(*i))) cy=(c(y_of(*v))) r="3.5" {
                        title { (b.start) " " (name) ": " (fmt_num(*v)) " ms" }
                    }
                }
            }
        }
        (x_labels(buckets, x_of))
    };
    chart(
        "durations",
        "Sync duration percentiles over time (milliseconds)",
        content,
    )
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
