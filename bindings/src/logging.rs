//! Logging: where the core's `tracing` events go, set up once per process.
//!
//! On Android they go to logcat (tag `fieldsync`) through `android_logger`,
//! on Apple platforms to the unified log (subsystem `dev.fieldsync`) through
//! `oslog`; both receive them through tracing's `log` bridge. Elsewhere (the
//! JVM tests, desktop tools) a `tracing-subscriber` writes them to stderr,
//! filtered by `RUST_LOG` when it is set. [`init_logging`] is idempotent:
//! the first call (or [`crate::Engine::open`], which uses `Info`) decides the
//! level, later calls do nothing.

use std::sync::Once;

static INIT: Once = Once::new();

/// The most detailed level of messages to log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum LogLevel {
    /// Failures only.
    Error,
    /// Failures and sync problems the engine recovers from.
    Warn,
    /// Also the start and end of each sync (the default).
    Info,
    /// Also per-page and per-request detail.
    Debug,
    /// Everything.
    Trace,
}

/// Sends the engine's log to the platform log at `level`. Only the first call
/// in a process takes effect; call it before opening an engine to choose a
/// level other than `Info`.
#[uniffi::export]
pub fn init_logging(level: LogLevel) {
    INIT.call_once(|| install(level));
}

/// Initialises logging at the default level unless the app already did.
pub(crate) fn ensure_logging() {
    init_logging(LogLevel::Info);
}

#[cfg(any(target_os = "android", target_vendor = "apple"))]
fn log_level(level: LogLevel) -> log::LevelFilter {
    match level {
        LogLevel::Error => log::LevelFilter::Error,
        LogLevel::Warn => log::LevelFilter::Warn,
        LogLevel::Info => log::LevelFilter::Info,
        LogLevel::Debug => log::LevelFilter::Debug,
        LogLevel::Trace => log::LevelFilter::Trace,
    }
}

#[cfg(target_os = "android")]
fn install(level: LogLevel) {
    android_logger::init_once(
        android_logger::Config::default()
            .with_max_level(log_level(level))
            .with_tag("fieldsync"),
    );
}

#[cfg(target_vendor = "apple")]
fn install(level: LogLevel) {
    // Fails only if the app installed another `log` logger; then that one is used.
    let _ = oslog::OsLogger::new("dev.fieldsync")
        .level_filter(log_level(level))
        .init();
}

#[cfg(not(any(target_os = "android", target_vendor = "apple")))]
fn install(level: LogLevel) {
    use tracing_subscriber::EnvFilter;
    let default = match level {
        LogLevel::Error => "error",
        LogLevel::Warn => "warn",
        LogLevel::Info => "info",
        LogLevel::Debug => "debug",
        LogLevel::Trace => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // Fails only if the host process installed its own subscriber; keep that one.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initialisation_is_idempotent() {
        init_logging(LogLevel::Debug);
        init_logging(LogLevel::Error);
        ensure_logging();
        assert!(INIT.is_completed());
    }
}
