//! The server's operational metrics, served at `GET /metrics` in the
//! OpenMetrics text format that Prometheus scrapes: requests by route and
//! status, pull pages and rows served, push outcomes, conflicts, Sync
//! Errors retries, database connections and the selection cache.
//!
//! Counters live in the process (each instance of a multi-instance
//! deployment reports its own; Prometheus sums them). Labels take only
//! bounded values: a route template (never a raw path), a status code, a
//! table of the data model, an outcome from a fixed list.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use fieldsync_protocol::protocol::MutationStatus;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tracing::Instrument;

use crate::App;

/// The media type of the OpenMetrics text format.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TableLabels {
    table: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

/// Every metric of one server process.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_seconds: Family<RouteLabels, Histogram>,
    pull_pages: Family<TableLabels, Counter>,
    pull_rows: Family<TableLabels, Counter>,
    pull_removed: Family<TableLabels, Counter>,
    pull_bytes: Family<TableLabels, Counter>,
    push_mutations: Family<OutcomeLabels, Counter>,
    conflicts: Family<TableLabels, Counter>,
    retries: Family<OutcomeLabels, Counter>,
    db_open: Gauge,
    db_idle: Gauge,
    db_max: Gauge,
    cache_bytes: Gauge,
    cache_sets: Gauge,
    cache_hits: Gauge,
    cache_misses: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every metric at zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("fieldsync");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by method, route template and status",
            requests.clone(),
        );
        let request_seconds = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.5, 12))
        });
        registry.register(
            "http_request_duration_seconds",
            "Time to answer an HTTP request (until its response head), by method and route template",
            request_seconds.clone(),
        );
        let pull_pages = Family::<TableLabels, Counter>::default();
        registry.register(
            "sync_pull_pages",
            "Pull pages served, by table",
            pull_pages.clone(),
        );
        let pull_rows = Family::<TableLabels, Counter>::default();
        registry.register(
            "sync_pull_rows",
            "Rows served to devices in pull pages (inserted or replaced), by table",
            pull_rows.clone(),
        );
        let pull_removed = Family::<TableLabels, Counter>::default();
        registry.register(
            "sync_pull_removed",
            "Row removals served to devices in pull pages, by table",
            pull_removed.clone(),
        );
        let pull_bytes = Family::<TableLabels, Counter>::default();
        registry.register(
            "sync_pull_bytes",
            "Bytes of pull pages served before compression, by table",
            pull_bytes.clone(),
        );
        let push_mutations = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "sync_push_mutations",
            "Uploaded mutations by outcome (applied, conflict, rejected)",
            push_mutations.clone(),
        );
        let conflicts = Family::<TableLabels, Counter>::default();
        registry.register(
            "sync_conflicts",
            "Uploaded changes the server refused as conflicts (conflict detection on), by table",
            conflicts.clone(),
        );
        let retries = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "sync_error_retries",
            "Sync Errors entries retried by an administrator, by outcome (applied, failed)",
            retries.clone(),
        );
        let db_open = Gauge::default();
        registry.register(
            "db_connections_open",
            "Database connections this instance holds (in use or idle)",
            db_open.clone(),
        );
        let db_idle = Gauge::default();
        registry.register(
            "db_connections_idle",
            "Database connections idle in this instance's pool",
            db_idle.clone(),
        );
        let db_max = Gauge::default();
        registry.register(
            "db_connections_max",
            "Most database connections this instance opens at once (0: no limit)",
            db_max.clone(),
        );
        let cache_bytes = Gauge::default();
        registry.register(
            "selection_cache_bytes",
            "Bytes the selection cache's sets take (estimated)",
            cache_bytes.clone(),
        );
        let cache_sets = Gauge::default();
        registry.register(
            "selection_cache_sets",
            "Selected-value sets kept in the selection cache",
            cache_sets.clone(),
        );
        let cache_hits = Gauge::default();
        registry.register(
            "selection_cache_hits",
            "Lookups the selection cache answered since the process started",
            cache_hits.clone(),
        );
        let cache_misses = Gauge::default();
        registry.register(
            "selection_cache_misses",
            "Lookups the selection cache could not answer since the process started",
            cache_misses.clone(),
        );
        Self {
            registry,
            requests,
            request_seconds,
            pull_pages,
            pull_rows,
            pull_removed,
            pull_bytes,
            push_mutations,
            conflicts,
            retries,
            db_open,
            db_idle,
            db_max,
            cache_bytes,
            cache_sets,
            cache_hits,
            cache_misses,
        }
    }

    /// Counts one pull page of `table`: `rows` rows in, `removed` out,
    /// `bytes` of JSON.
    pub fn pull_page(&self, table: &str, rows: usize, removed: usize, bytes: usize) {
        let labels = TableLabels {
            table: table.to_owned(),
        };
        self.pull_pages.get_or_create(&labels).inc();
        self.pull_rows.get_or_create(&labels).inc_by(rows as u64);
        self.pull_removed
            .get_or_create(&labels)
            .inc_by(removed as u64);
        self.pull_bytes.get_or_create(&labels).inc_by(bytes as u64);
    }

    /// Counts one uploaded mutation of `table` by its outcome.
    pub fn push_outcome(&self, table: &str, status: MutationStatus) {
        let outcome = match status {
            MutationStatus::Applied => "applied",
            MutationStatus::Conflict => "conflict",
            MutationStatus::Rejected => "rejected",
        };
        self.push_mutations
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
        if status == MutationStatus::Conflict {
            self.conflicts
                .get_or_create(&TableLabels {
                    table: table.to_owned(),
                })
                .inc();
        }
    }

    /// Counts one retry of a Sync Errors entry.
    pub fn retry_outcome(&self, applied: bool) {
        let outcome = if applied { "applied" } else { "failed" };
        self.retries
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    fn request(&self, method: &str, route: &str, status: StatusCode, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                method: method.to_owned(),
                route: route.to_owned(),
                status: status.as_u16(),
            })
            .inc();
        self.request_seconds
            .get_or_create(&RouteLabels {
                method: method.to_owned(),
                route: route.to_owned(),
            })
            .observe(seconds);
    }

    /// The metrics as OpenMetrics text, with the database's and the
    /// selection cache's gauges read now.
    pub fn render(&self, db: &crate::db::Db) -> String {
        let pool = db.pool_stats();
        self.db_open.set(gauge(pool.open));
        self.db_idle.set(gauge(pool.idle));
        self.db_max.set(gauge(pool.max));
        let cache = db.selection_cache_stats();
        self.cache_bytes.set(gauge(cache.bytes));
        self.cache_sets.set(gauge(cache.sets));
        self.cache_hits
            .set(cache.hits.try_into().unwrap_or(i64::MAX));
        self.cache_misses
            .set(cache.misses.try_into().unwrap_or(i64::MAX));
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The route template a request matched (`/v1/records/{table}/{id}`), or
/// `unmatched`: never the raw path, whose values are unbounded.
fn route_of(request: &Request) -> String {
    request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned())
}

/// Middleware: counts and times each request by route and status, inside a
/// span `HTTP <method> <route>` (exported as an OpenTelemetry span when
/// tracing export is on, and continuing the caller's trace when the
/// request carries a W3C `traceparent`).
pub async fn track(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let method = request.method().as_str().to_owned();
    let route = route_of(&request);
    let span = tracing::info_span!(
        "request",
        otel.name = format!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    crate::observe::continue_trace(&span, request.headers());
    let started = Instant::now();
    let response = next.run(request).instrument(span.clone()).await;
    let status = response.status();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    app.metrics
        .request(&method, &route, status, started.elapsed().as_secs_f64());
    response
}

/// `GET /metrics`: the metrics in the OpenMetrics text format. Open like
/// `/v1/health` unless the server was given a metrics token, which a
/// scraper then sends as a bearer token.
pub async fn scrape(State(app): State<Arc<App>>, headers: axum::http::HeaderMap) -> Response {
    if let Some(hash) = &app.metrics_token_hash {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|t| crate::db::hash_token(t.trim()));
        if given.as_deref() != Some(hash.as_str()) {
            return crate::error::ApiError::unauthorized().into_response();
        }
    }
    let db = app.db.clone();
    let metrics = app.clone();
    match tokio::task::spawn_blocking(move || metrics.metrics.render(&db)).await {
        Ok(text) => (
            [(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))],
            text,
        )
            .into_response(),
        Err(e) => crate::error::ApiError::internal(format!("metrics: {e}")).into_response(),
    }
}
