//! `fieldsync`: the reference sync server, a headless device running the same
//! core as the apps, and a demo that walks through both.
//!
//! Exit codes of `fieldsync device`: 0 success, 1 internal error, 2 bad input,
//! 3 Record Not Found, 4 sync conflict, 5 Network or Service Unavailable,
//! 6 unauthorized, 7 reset refused (pending uploads), 8 storage error,
//! 9 sync not started (Wi-Fi only on a metered network).
//! 10 wrong database key, 11 forbidden (outside the user's scope on the
//! server), 141 stdout closed (`| head`).

mod demo;
mod device;
mod device_io;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "fieldsync",
    version,
    propagate_version = true,
    about = "Offline-first sync for field-service apps"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the reference sync server (embedded SQLite, or PostgreSQL with --database-url).
    Server(ServerArgs),
    /// Run a headless device: sync, read and write its offline database.
    Device(device::DeviceArgs),
    /// Start a server with sample data and walk a device through sync and conflicts.
    Demo(demo::DemoArgs),
}

/// Seconds in a day (the retention flags count days).
const DAY_SECS: u64 = 86_400;

#[derive(clap::Args)]
struct ServerArgs {
    /// The company's data model, a JSON file (docs/data-model.md); without
    /// it, the built-in Field Service model. A file that differs from the
    /// one the database last started with is published as a new version.
    #[arg(long, env = "FIELDSYNC_MODEL")]
    model: Option<PathBuf>,
    /// Directory of the embedded database.
    #[arg(long, env = "FIELDSYNC_DATA_DIR", default_value = "fieldsync-data")]
    data_dir: PathBuf,
    /// Database URL: postgres://user:password@host:port/dbname (PostgreSQL;
    /// several instances may share it) or sqlite:<file>. Without it, the
    /// embedded SQLite database in --data-dir.
    #[arg(long, env = "FIELDSYNC_DATABASE_URL")]
    database_url: Option<String>,
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "FIELDSYNC_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Bearer token of the administrator, at least 24 characters (for
    /// example `openssl rand -hex 16`). Give it in the environment
    /// (FIELDSYNC_ADMIN_TOKEN): on the command line, `ps` shows it to every
    /// user of the machine.
    #[arg(long, env = "FIELDSYNC_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: String,
    /// Fault simulation: delay each pull page by this many milliseconds.
    #[arg(long, default_value_t = 0)]
    pull_delay_ms: u64,
    /// Longest a request may take, reading its body included.
    #[arg(long, default_value_t = 60)]
    request_timeout_secs: u64,
    /// PEM file of certificate authorities a PostgreSQL server's
    /// certificate may chain to, besides Mozilla's roots (a managed
    /// database's provider CA). TLS follows the URL's `sslmode`.
    #[arg(long, env = "FIELDSYNC_DATABASE_CA_FILE")]
    database_ca_file: Option<PathBuf>,
    /// Days a push receipt answers a retried push; older ones are purged
    /// hourly.
    #[arg(long, default_value_t = fieldsync_server::DEFAULT_RECEIPT_RETENTION.as_secs() / DAY_SECS)]
    receipt_retention_days: u64,
    /// Days device telemetry is kept; older events are purged hourly.
    #[arg(long, default_value_t = fieldsync_server::DEFAULT_TELEMETRY_RETENTION.as_secs() / DAY_SECS)]
    telemetry_retention_days: u64,
    /// Days a Sync Errors entry is kept; older ones are purged hourly.
    #[arg(long, default_value_t = fieldsync_server::DEFAULT_SYNC_ERROR_RETENTION.as_secs() / DAY_SECS)]
    sync_error_retention_days: u64,
    /// MiB of related rules' selected values kept between the pages of
    /// first downloads (per instance); 0 keeps none.
    #[arg(long, default_value_t = fieldsync_server::selection::DEFAULT_CACHE_BYTES >> 20)]
    selection_cache_mib: usize,
    /// Seconds a connection has to send a request's complete headers, from
    /// its opening or its previous response (so also how long an idle
    /// keep-alive connection stays open).
    #[arg(long, default_value_t = fieldsync_server::listen::DEFAULT_HEADER_READ_TIMEOUT.as_secs())]
    header_timeout_secs: u64,
    /// Most connections open at once; more wait in the listen queue. Keep it
    /// well under the process's open-file limit (`ulimit -n`).
    #[arg(long, default_value_t = fieldsync_server::listen::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// The server is reached through a TLS-terminating proxy (HTTPS to the
    /// proxy): the console's session cookie is marked Secure.
    #[arg(long, env = "FIELDSYNC_BEHIND_TLS_PROXY")]
    behind_tls_proxy: bool,
    /// Failed sign-ins (console or bearer token) a source address may make
    /// at once before it is answered 429.
    #[arg(long, default_value_t = fieldsync_server::limits::SignInLimits::default().burst)]
    sign_in_burst: u32,
    /// Seconds after which a limited source may try once more.
    #[arg(long, default_value_t = fieldsync_server::limits::SignInLimits::default().refill_every.as_secs())]
    sign_in_refill_secs: u64,
    /// Log lines on stderr as text or as one JSON object a line (the
    /// level follows FIELDSYNC_LOG, default `warn`).
    #[arg(long, env = "FIELDSYNC_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Bearer token a scraper must send to read /metrics; without it
    /// /metrics is open like /v1/health.
    #[arg(long, env = "FIELDSYNC_METRICS_TOKEN", hide_env_values = true)]
    metrics_token: Option<String>,
}

/// `--log-format`.
#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// The `FIELDSYNC_LOG` filter (default `warn`).
fn log_filter() -> String {
    std::env::var("FIELDSYNC_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| "warn".into())
}

/// Logs of `device` and `demo`: text on stderr, coloured only on a
/// terminal.
fn init_logging() {
    let _ = fieldsync_server::observe::init(
        &log_filter(),
        fieldsync_server::observe::LogFormat::Text,
        false,
    );
}

async fn run_server(args: ServerArgs) -> ExitCode {
    let format = match args.log_format {
        LogFormat::Text => fieldsync_server::observe::LogFormat::Text,
        LogFormat::Json => fieldsync_server::observe::LogFormat::Json,
    };
    // Flushes the spans still buffered when the server stops.
    let mut tracing = match fieldsync_server::observe::init(&log_filter(), format, true) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("fieldsync server: {e}");
            return ExitCode::from(2);
        }
    };
    let code = serve_until_stopped(args).await;
    tracing.shutdown();
    code
}

async fn serve_until_stopped(args: ServerArgs) -> ExitCode {
    let mut config = fieldsync_server::ServerConfig::new(&args.data_dir, &args.admin_token);
    config.database_url = args.database_url.clone();
    config.pull_delay = Duration::from_millis(args.pull_delay_ms);
    config.selection_cache_bytes = args.selection_cache_mib.saturating_mul(1 << 20);
    config.request_timeout = Duration::from_secs(args.request_timeout_secs.max(1));
    config.behind_tls_proxy = args.behind_tls_proxy;
    config.metrics_token = args.metrics_token.clone().filter(|t| !t.is_empty());
    config.sign_in_limits = fieldsync_server::limits::SignInLimits {
        burst: args.sign_in_burst.max(1),
        refill_every: Duration::from_secs(args.sign_in_refill_secs.max(1)),
    };
    config.connection_limits = fieldsync_server::listen::ConnectionLimits {
        header_read_timeout: Duration::from_secs(args.header_timeout_secs.max(1)),
        max_connections: args.max_connections.max(1),
    };
    if let Some(file) = &args.model {
        let text = match std::fs::read_to_string(file) {
            Ok(text) => text,
            Err(e) => {
                eprintln!("cannot read the data model {}: {e}", file.display());
                return ExitCode::from(2);
            }
        };
        match fieldsync_core::profile::DataModel::parse(&text) {
            Ok(model) => config.model = Some(model),
            Err(e) => {
                eprintln!("the data model {} is refused: {e}", file.display());
                return ExitCode::from(2);
            }
        }
    }
    if let Some(file) = &args.database_ca_file {
        match std::fs::read_to_string(file) {
            Ok(pem) => config.database_ca_pem = Some(pem),
            Err(e) => {
                eprintln!("cannot read the database CA file {}: {e}", file.display());
                return ExitCode::from(2);
            }
        }
    }
    config.receipt_retention =
        Duration::from_secs(args.receipt_retention_days.max(1).saturating_mul(DAY_SECS));
    config.telemetry_retention = Duration::from_secs(
        args.telemetry_retention_days
            .max(1)
            .saturating_mul(DAY_SECS),
    );
    config.sync_error_retention = Duration::from_secs(
        args.sync_error_retention_days
            .max(1)
            .saturating_mul(DAY_SECS),
    );
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("fieldsync server: cannot listen on {}: {e}", args.listen);
            return ExitCode::from(1);
        }
    };
    let database = match &args.database_url {
        Some(url) if url.starts_with("postgres") => "postgresql",
        _ => "sqlite",
    };
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let server = match fieldsync_server::prepare(&config) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("fieldsync server: {}", e.message);
            return ExitCode::from(1);
        }
    };
    println!(
        "{}",
        serde_json::json!({"event": "listening", "address": addr, "database": database})
    );
    let shutdown = async {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(_) => {
                        let _ = ctrl_c.await;
                        return;
                    }
                };
            tokio::select! {
                _ = ctrl_c => {},
                _ = term.recv() => {},
            }
        }
        #[cfg(not(unix))]
        {
            let _ = ctrl_c.await;
        }
    };
    match server.serve(listener, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fieldsync server: {e}");
            ExitCode::from(1)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("fieldsync: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async move {
        match cli.command {
            Command::Server(args) => run_server(args).await,
            Command::Device(args) => {
                init_logging();
                device::run(args).await
            }
            Command::Demo(args) => {
                init_logging();
                demo::run(args).await
            }
        }
    })
}
