//! fieldsync reference sync server (S1): per-user bearer tokens, offline
//! profiles, paged pull from a change log, idempotent push, the
//! conflict-detection setting, the Sync Errors log, and the admin API.
//! Embedded SQLite by default; PostgreSQL when given a `postgres://` URL.
//!
//! The service keeps no state outside its database, so several instances
//! can serve one database. [`router`] builds the HTTP application;
//! [`serve`] runs it on a listener.

pub mod api;
pub mod console;
pub mod db;
pub mod error;
pub mod limits;
pub mod listen;
pub mod metrics;
pub mod model;
pub mod observe;
pub mod page;
pub mod pgtls;
pub mod rules;
pub mod schema;
pub mod seed;
pub mod selection;
pub mod sql;
pub mod store_error;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post};
use fieldsync_protocol::profile::{DataModel, OfflineProfile};
use fieldsync_protocol::protocol::MAX_REQUEST_BYTES;
use fieldsync_protocol::{Clock, SystemClock};
use tower_http::compression::{CompressionLayer, CompressionLevel};
use tower_http::timeout::TimeoutLayer;

use crate::db::{DatabaseUrl, Db, Purged};
use crate::error::ApiError;

/// The field-service data model shipped with the server.
pub fn field_service_model() -> DataModel {
    serde_json::from_str(include_str!("../model/field_service_model.json"))
        .unwrap_or_else(|e| panic!("built-in data model does not parse: {e}"))
}

/// The default offline profile shipped with the server.
pub fn field_service_profile() -> OfflineProfile {
    serde_json::from_str(include_str!("../model/field_service_profile.json"))
        .unwrap_or_else(|e| panic!("built-in profile does not parse: {e}"))
}

/// How to run the server.
#[derive(Clone)]
pub struct ServerConfig {
    /// Directory of the embedded database (used when `database_url` is
    /// `None`).
    pub data_dir: PathBuf,
    /// Where the data lives: `postgres://…` (PostgreSQL, for several
    /// instances on one database) or `sqlite:<file>`; `None` is
    /// `data_dir/fieldsync.db`.
    pub database_url: Option<String>,
    /// Bearer token of the administrator (admin API).
    pub admin_token: String,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Fault simulation: delay before each pull page is answered.
    pub pull_delay: Duration,
    /// Longest a request may take, reading its body included (slow clients
    /// are cut off with 408).
    pub request_timeout: Duration,
    /// The server's clock ("today" in relative-date filters); tests inject
    /// a controlled one.
    pub clock: Arc<dyn Clock>,
    /// PEM certificates of the authorities a PostgreSQL server's certificate
    /// may chain to, besides Mozilla's roots (see [`pgtls`]).
    pub database_ca_pem: Option<String>,
    /// How long a push receipt answers a retried push (see `Db::purge`).
    pub receipt_retention: Duration,
    /// How long device telemetry is kept.
    pub telemetry_retention: Duration,
    /// How long Sync Errors entries are kept.
    pub sync_error_retention: Duration,
    /// Bytes of related rules' selected values kept between the pages of
    /// first downloads (see [`selection`]); 0 keeps none.
    pub selection_cache_bytes: usize,
    /// How many connections are held at once and how long the server waits
    /// for a request's headers (see [`listen`]).
    pub connection_limits: listen::ConnectionLimits,
    /// The server is reached through a TLS-terminating proxy: the console's
    /// session cookie is marked `Secure` (it is also whenever a request says
    /// `X-Forwarded-Proto: https`).
    pub behind_tls_proxy: bool,
    /// How many failed sign-ins a source address may make (see [`limits`]).
    pub sign_in_limits: limits::SignInLimits,
    /// When set, `GET /metrics` asks for this bearer token; open without it.
    pub metrics_token: Option<String>,
    /// The company's data model (`--model FILE`); `None` is the built-in
    /// Field Service model. Published as a new version at start when it
    /// differs from the model the database last started with (see
    /// [`model`]).
    pub model: Option<DataModel>,
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("data_dir", &self.data_dir)
            .field(
                "database",
                &self
                    .database_url
                    .as_deref()
                    .map(redact_url)
                    .unwrap_or_default(),
            )
            .field("max_body_bytes", &self.max_body_bytes)
            .field("pull_delay", &self.pull_delay)
            .field("connection_limits", &self.connection_limits)
            .field("behind_tls_proxy", &self.behind_tls_proxy)
            .field("sign_in_limits", &self.sign_in_limits)
            .finish_non_exhaustive()
    }
}

impl ServerConfig {
    /// A configuration with default limits.
    pub fn new(data_dir: impl Into<PathBuf>, admin_token: &str) -> Self {
        Self {
            data_dir: data_dir.into(),
            database_url: None,
            admin_token: admin_token.to_owned(),
            max_body_bytes: MAX_REQUEST_BYTES,
            pull_delay: Duration::ZERO,
            request_timeout: Duration::from_secs(60),
            clock: Arc::new(SystemClock),
            database_ca_pem: None,
            receipt_retention: DEFAULT_RECEIPT_RETENTION,
            telemetry_retention: DEFAULT_TELEMETRY_RETENTION,
            sync_error_retention: DEFAULT_SYNC_ERROR_RETENTION,
            selection_cache_bytes: selection::DEFAULT_CACHE_BYTES,
            connection_limits: listen::ConnectionLimits::default(),
            behind_tls_proxy: false,
            sign_in_limits: limits::SignInLimits::default(),
            metrics_token: None,
            model: None,
        }
    }
}

/// The shortest admin token the server starts with: a random token meets
/// it (`openssl rand -hex 16` gives 32 characters), a word does not.
pub const MIN_ADMIN_TOKEN_CHARS: usize = 24;

/// Push receipts are kept 30 days: a device that lost the answer to a push
/// retries it within that time unless it stays offline for a month.
pub const DEFAULT_RECEIPT_RETENTION: Duration = Duration::from_secs(30 * 86_400);
/// Device telemetry is kept 90 days.
pub const DEFAULT_TELEMETRY_RETENTION: Duration = Duration::from_secs(90 * 86_400);
/// Sync Errors entries are kept 90 days.
pub const DEFAULT_SYNC_ERROR_RETENTION: Duration = Duration::from_secs(90 * 86_400);
/// How often a serving process purges (the first time a minute after it
/// starts).
const PURGE_EVERY: Duration = Duration::from_secs(3_600);

/// A database URL with its password replaced by `***`, for logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Shared state of the handlers.
pub struct App {
    pub db: Arc<Db>,
    pub admin_token_hash: String,
    pub default_profile: String,
    pub pull_delay: Duration,
    /// Largest request body read, in bytes.
    pub max_body_bytes: usize,
    /// See [`ServerConfig::behind_tls_proxy`].
    pub behind_tls_proxy: bool,
    /// Failed sign-ins per source address.
    pub sign_ins: limits::SignInLimiter,
    /// The process's counters (`GET /metrics`).
    pub metrics: metrics::Metrics,
    /// Hash of [`ServerConfig::metrics_token`].
    pub metrics_token_hash: Option<String>,
}

/// Opens the database and builds the HTTP application.
pub fn router(config: &ServerConfig) -> Result<Router, ApiError> {
    Ok(application(config)?.0)
}

/// A storage failure at start-up, told to the operator whole (with its
/// causes), unlike a request's, whose causes stay in the log.
fn at_start(e: db::StoreError) -> ApiError {
    ApiError::internal(e.report())
}

/// [`router`], with the database it serves.
fn application(config: &ServerConfig) -> Result<(Router, Arc<Db>), ApiError> {
    if config.admin_token.chars().count() < MIN_ADMIN_TOKEN_CHARS {
        return Err(ApiError::internal(format!(
            "the admin token must have at least {MIN_ADMIN_TOKEN_CHARS} characters \
             (for example `openssl rand -hex 16`)"
        )));
    }
    let profile = field_service_profile();
    let url = match &config.database_url {
        Some(url) => DatabaseUrl::parse(url).map_err(at_start)?,
        None => DatabaseUrl::Sqlite(config.data_dir.join("fieldsync.db")),
    };
    let db = Db::open_url(
        &url,
        config.model.clone().unwrap_or_else(field_service_model),
        &profile,
        config.database_ca_pem.as_deref(),
        config.clock.clone(),
    )
    .map_err(at_start)?
    .with_selection_cache(config.selection_cache_bytes);
    let db = Arc::new(db);
    let app = Arc::new(App {
        db: db.clone(),
        admin_token_hash: db::hash_token(&config.admin_token),
        default_profile: profile.name,
        pull_delay: config.pull_delay,
        max_body_bytes: config.max_body_bytes,
        behind_tls_proxy: config.behind_tls_proxy,
        sign_ins: limits::SignInLimiter::new(config.sign_in_limits, config.clock.clone()),
        metrics: metrics::Metrics::new(),
        metrics_token_hash: config.metrics_token.as_deref().map(db::hash_token),
    });
    let router = Router::new()
        .route("/v1/health", get(api::request::health))
        .route("/metrics", get(metrics::scrape))
        .route("/v1/profile", get(api::sync::profile))
        .route("/v1/sync/pull", get(api::sync::pull))
        .route("/v1/sync/push", post(api::sync::push))
        .route("/v1/sync/changes", post(api::sync::changes))
        .route("/v1/sync/counts", post(api::sync::counts))
        .route("/v1/telemetry", post(api::telemetry::upload))
        .route("/v1/sync/fetch", post(api::sync::fetch))
        .route("/v1/records/{table}", get(api::records::list_records))
        .route(
            "/v1/records/{table}/{id}",
            get(api::records::get_record)
                .put(api::records::put_record)
                .delete(api::records::delete_record),
        )
        .route(
            "/v1/admin/users",
            get(api::admin::list_users).post(api::admin::create_user),
        )
        .route("/v1/admin/users/{id}", delete(api::admin::delete_user))
        .route("/v1/admin/users/{id}/token", post(api::admin::rotate_token))
        .route(
            "/v1/admin/settings",
            get(api::admin::get_settings).put(api::admin::put_settings),
        )
        .route("/v1/admin/sync-errors", get(api::admin::sync_errors))
        .route(
            "/v1/admin/sync-errors/{id}/retry",
            post(api::admin::retry_sync_error_route),
        )
        .route("/v1/admin/profiles", get(api::profiles::list_profiles))
        .route(
            "/v1/admin/profiles/{name}",
            get(api::profiles::get_profile).put(api::profiles::put_profile),
        )
        .route(
            "/v1/admin/model",
            get(api::profiles::model).put(api::profiles::publish_model),
        )
        .route(
            "/v1/admin/model/versions",
            get(api::profiles::model_versions),
        )
        .route("/v1/admin/devices", get(api::admin::devices))
        .route("/v1/admin/seed", post(api::profiles::seed))
        .route("/v1/admin/telemetry", get(api::telemetry::admin_list))
        .route(
            "/v1/admin/telemetry/summary",
            get(api::telemetry::admin_summary),
        )
        .route(
            "/v1/admin/online-access",
            get(api::admin::get_access).put(api::admin::put_access),
        )
        .merge(console::router())
        .fallback(api::request::not_found)
        .method_not_allowed_fallback(api::request::method_not_allowed)
        .layer(axum::middleware::from_fn(api::request::check_protocol))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            limits::limit_sign_ins,
        ))
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            config.request_timeout,
        ))
        // zstd or gzip, as the client's accept-encoding asks (zstd wins a
        // tie), at the fastest level: pull pages are repetitive JSON, so
        // the fastest level already takes them to a fraction of their size
        // while costing the server little (docs/performance.md).
        .layer(CompressionLayer::new().quality(CompressionLevel::Fastest))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            metrics::track,
        ))
        .with_state(app);
    Ok((router, db))
}

/// A server whose database is open and migrated, ready to serve.
pub struct Prepared {
    router: Router,
    db: Arc<Db>,
    retention: db::Retention,
    limits: listen::ConnectionLimits,
}

/// Opens the database and builds the application of `config`; a caller
/// that reports readiness (the CLI's `listening` line) does so between
/// this and [`Prepared::serve`].
pub fn prepare(config: &ServerConfig) -> Result<Prepared, ApiError> {
    let (router, db) = application(config)?;
    Ok(Prepared {
        router,
        db,
        retention: db::Retention {
            receipts: config.receipt_retention,
            telemetry: config.telemetry_retention,
            sync_errors: config.sync_error_retention,
        },
        limits: config.connection_limits,
    })
}

/// Serves the application on `listener` until `shutdown` completes, within
/// the configuration's connection limits (see [`listen`]), purging what
/// outlived its retention hourly.
pub async fn serve(
    config: &ServerConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    prepare(config)
        .map_err(|e| std::io::Error::other(e.to_string()))?
        .serve(listener, shutdown)
        .await
}

impl Prepared {
    /// Serves on `listener` until `shutdown` completes; purges push
    /// receipts, telemetry and Sync Errors past their retention a minute
    /// after start, then hourly.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let Prepared {
            router,
            db,
            retention,
            limits,
        } = self;
        let purging = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(60)).await;
            loop {
                let db = db.clone();
                match tokio::task::spawn_blocking(move || db.purge(&retention)).await {
                    Ok(Ok(p)) if p != Purged::default() => {
                        tracing::info!(
                            receipts = p.receipts,
                            telemetry = p.telemetry,
                            sync_errors = p.sync_errors,
                            "purged"
                        );
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e.report(), "purge failed"),
                    Err(e) => tracing::warn!(error = %e, "purge task failed"),
                }
                tokio::time::sleep(PURGE_EVERY).await;
            }
        });
        let served = listen::serve_connections(listener, router, limits, shutdown).await;
        purging.abort();
        served
    }
}
