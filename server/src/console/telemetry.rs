//! The console's Telemetry page and the one place the console reads
//! telemetry: [`read`]. The console renders whatever [`TelemetryView`] that
//! function returns — sync counts over time, failure rates by failure type,
//! and duration percentiles over time, as charts — and the Devices page
//! takes each device's reported pending uploads and app version from it.
//!
//! The aggregate shape is defined here so the console does not depend on
//! how telemetry is stored: telemetry ingestion (`POST /v1/telemetry` and its
//! aggregate query) fills it in [`read`].

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use maud::{PreEscaped, html};
use serde::{Deserialize, Serialize};

use crate::App;
use crate::api::blocking;
use crate::console::auth::Admin;
use crate::console::charts;
use crate::console::charts::{FailureTypeCount, TelemetryBucket};
use crate::console::html::{Section, page};
use crate::console::response::{error_page, html_response};
use crate::db::Db;
use crate::error::ApiResult;

/// Sync telemetry aggregated over a window, as the console charts it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TelemetryAggregate {
    /// Width of each bucket in seconds.
    pub bucket_secs: u64,
    /// Buckets, oldest first.
    pub buckets: Vec<TelemetryBucket>,
    /// Failed syncs by failure type over the whole window, most first.
    pub failures_by_type: Vec<FailureTypeCount>,
}

/// What a device last reported about itself through telemetry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceReport {
    /// Changes waiting in the device's outbox.
    pub pending_uploads: Option<u64>,
    /// The app's version.
    pub app_version: Option<String>,
}

/// Everything the console shows from telemetry.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TelemetryView {
    /// Sync counts, failures and durations.
    pub aggregate: TelemetryAggregate,
    /// Latest report per (device id, user id).
    pub devices: BTreeMap<(String, String), DeviceReport>,
}

/// Reads telemetry for the console.
///
/// This server does not ingest telemetry yet: nothing is stored, so the
/// view is empty and the Telemetry and Devices pages say so. Telemetry
/// ingestion connects its aggregate query here (mapping into
/// [`TelemetryAggregate`] and [`DeviceReport`]); no other console code
/// changes.
pub fn read(db: &Db) -> ApiResult<TelemetryView> {
    use fieldsync_protocol::telemetry::{TelemetryKind, TelemetryResult};
    const BUCKET_SECS: i64 = 3600;
    let events = crate::db::telemetry::list(
        db,
        &crate::db::telemetry::TelemetryQuery {
            kind: Some("sync".into()),
            limit: Some(5000),
            ..Default::default()
        },
    )?;
    // Hourly buckets of the sync events, oldest first.
    let mut buckets: BTreeMap<i64, (u64, u64, u64, Vec<i64>)> = BTreeMap::new();
    let mut failures: BTreeMap<String, u64> = BTreeMap::new();
    let mut devices: BTreeMap<(String, String), (i64, DeviceReport)> = BTreeMap::new();
    for stored in &events {
        let e = &stored.event;
        if e.kind != TelemetryKind::Sync {
            continue;
        }
        let start = e.started_at.div_euclid(BUCKET_SECS * 1000) * BUCKET_SECS * 1000;
        let bucket = buckets.entry(start).or_default();
        bucket.0 += 1;
        if e.result != TelemetryResult::Success {
            bucket.1 += 1;
            *failures
                .entry(e.failure_type.clone().unwrap_or_else(|| "unknown".into()))
                .or_default() += 1;
        } else if e.conflicts + e.rejected > 0 {
            bucket.2 += 1;
        }
        bucket.3.push(e.duration_ms);
        let key = (e.device_id.clone(), stored.user_id.clone());
        let newer = devices.get(&key).is_none_or(|(at, _)| *at <= e.started_at);
        if newer {
            let report = DeviceReport {
                pending_uploads: e.pending_uploads,
                app_version: (!e.app_version.is_empty()).then(|| e.app_version.clone()),
            };
            devices.insert(key, (e.started_at, report));
        }
    }
    let percentile = |sorted: &[i64], p: f64| -> Option<f64> {
        if sorted.is_empty() {
            return None;
        }
        let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        Some(sorted[rank - 1] as f64)
    };
    let buckets = buckets
        .into_iter()
        .map(|(start, (syncs, failed, with_conflicts, mut durations))| {
            durations.sort_unstable();
            TelemetryBucket {
                start: fieldsync_protocol::time::format_datetime(start),
                syncs,
                failed,
                with_conflicts,
                duration_ms_p50: percentile(&durations, 0.50),
                duration_ms_p90: percentile(&durations, 0.90),
                duration_ms_p99: percentile(&durations, 0.99),
            }
        })
        .collect();
    let mut failures_by_type: Vec<FailureTypeCount> = failures
        .into_iter()
        .map(|(failure_type, count)| FailureTypeCount {
            failure_type,
            count,
        })
        .collect();
    failures_by_type.sort_by_key(|f| std::cmp::Reverse(f.count));
    Ok(TelemetryView {
        aggregate: TelemetryAggregate {
            bucket_secs: BUCKET_SECS as u64,
            buckets,
            failures_by_type,
        },
        devices: devices.into_iter().map(|(k, (_, r))| (k, r)).collect(),
    })
}

/// The Telemetry page's body for an aggregate (charts, or the empty state).
pub fn body(aggregate: &TelemetryAggregate) -> String {
    let total: u64 = aggregate.buckets.iter().map(|b| b.syncs).sum();
    if aggregate.buckets.is_empty() || total == 0 {
        return html! {
            p.empty #telemetry-empty { "No sync telemetry has been received yet. Devices upload sync events in batches while telemetry is enabled on them; charts appear here once the first batch arrives." }
        }
        .into_string();
    }
    let failed: u64 = aggregate
        .buckets
        .iter()
        .map(|b| b.failed.min(b.syncs))
        .sum();
    let rate = format!("{:.1}%", failed as f64 * 100.0 / total as f64);
    let conflicted: u64 = aggregate.buckets.iter().map(|b| b.with_conflicts).sum();
    let clean = total.saturating_sub(failed).saturating_sub(conflicted);
    let stat = |id: Option<&str>, n: String, label: &str| {
        html! { div.stat id=[id] { span.n { (n) } " " (label) } }
    };
    html! {
        div.stats {
            (stat(Some("stat-syncs"), total.to_string(), "syncs"))
            (stat(Some("stat-succeeded"), clean.to_string(), "succeeded"))
            (stat(Some("stat-conflicts"), conflicted.to_string(), "ended with conflicts"))
            (stat(Some("stat-failed"), failed.to_string(), "failed"))
            (stat(None, rate, "failure rate"))
            (stat(None, aggregate.buckets.len().to_string(), &format!("buckets of {} min", aggregate.bucket_secs / 60)))
        }
        section.card {
            h2 { "Syncs over time" }
            p.legend {
                span.key.ok {} "succeeded "
                span.key.conflicts {} "ended with conflicts "
                span.key.failed {} "failed"
            }
            (PreEscaped(charts::sync_counts(&aggregate.buckets)))
        }
        section.card {
            h2 { "Failure rate by failure type" }
            @if aggregate.failures_by_type.is_empty() {
                p.empty { "No sync failed in this window." }
            } @else {
                (PreEscaped(charts::failures_by_type(&aggregate.failures_by_type, total)))
            }
        }
        section.card {
            h2 { "Sync duration percentiles" }
            p.legend {
                span.key.p50 {} "p50 "
                span.key.p90 {} "p90 "
                span.key.p99 {} "p99"
            }
            (PreEscaped(charts::duration_percentiles(&aggregate.buckets)))
        }
    }
    .into_string()
}

/// `GET /console/telemetry`.
pub async fn show(State(app): State<Arc<App>>, admin: Admin) -> Response {
    let db = app.db.clone();
    match blocking(move || read(&db)).await {
        Ok(view) => html_response(
            StatusCode::OK,
            page(
                "Telemetry",
                Section::Telemetry,
                &admin.name,
                &admin.csrf,
                &body(&view.aggregate),
            ),
        ),
        Err(e) => error_page(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_aggregate_shows_the_empty_state() {
        let html = body(&TelemetryAggregate::default());
        assert!(html.contains("telemetry-empty"));
        assert!(!html.contains("<svg"));
    }

    #[test]
    fn aggregate_with_syncs_shows_three_charts() {
        let a = TelemetryAggregate {
            bucket_secs: 3600,
            buckets: vec![TelemetryBucket {
                start: "2026-11-29T01:00:00Z".into(),
                syncs: 8,
                failed: 2,
                with_conflicts: 1,
                duration_ms_p50: Some(120.0),
                duration_ms_p90: Some(300.0),
                duration_ms_p99: Some(900.0),
            }],
            failures_by_type: vec![FailureTypeCount {
                failure_type: "network_unavailable".into(),
                count: 2,
            }],
        };
        let html = body(&a);
        assert_eq!(html.matches("<svg").count(), 3);
        assert!(html.contains("25.0%"));
        assert!(
            html.contains("<span class=\"n\">5</span> succeeded"),
            "a sync with conflicts is not a plain success: {html}"
        );
        assert!(html.contains("<span class=\"n\">1</span> ended with conflicts"));
        assert!(html.contains("<span class=\"n\">1</span> buckets of 60 min"));
    }
}
