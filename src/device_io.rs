//! How `fieldsync device` reads and writes: field values from the command
//! line, records, reports and events as text or JSON lines, progress, and
//! the exit code of each kind of error.

use std::collections::BTreeMap;
use std::process::ExitCode;

use fieldsync_core::{
    Blocker, DeviceStatus, Engine, Error, ErrorKind, EventListener, OfflineTableStatus,
    StatusListener, SyncEvent, SyncReport, SyncStatus, Value,
};
use serde::Serialize;

/// `status` output: the device status, plus the sync icon and offline status.
#[derive(Serialize)]
pub(crate) struct StatusOut {
    #[serde(flatten)]
    pub(crate) device: DeviceStatus,
    pub(crate) sync_status: SyncStatus,
    pub(crate) offline_status: Vec<OfflineTableStatus>,
}

/// Prints events and status changes as JSON lines (`watch`).
pub(crate) struct JsonLines;

impl EventListener for JsonLines {
    fn on_event(&self, event: SyncEvent) {
        if let Ok(line) = serde_json::to_string(&event) {
            out(line);
        }
    }
}

impl StatusListener for JsonLines {
    fn on_status(&self, status: SyncStatus) {
        if let Ok(line) =
            serde_json::to_string(&serde_json::json!({"event": "status_changed", "status": status}))
        {
            out(line);
        }
    }
}

/// Writes a line on stdout. A closed pipe (`fieldsync device list | head`)
/// ends the process quietly with 141, as SIGPIPE would; another write
/// failure ends it with 1.
pub fn out(line: impl std::fmt::Display) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = writeln!(stdout, "{line}").and_then(|()| stdout.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(141);
        }
        err(format_args!("fieldsync: cannot write the output: {e}"));
        std::process::exit(1);
    }
}

/// Writes a line on stderr; a failure to write it is ignored.
pub fn err(line: impl std::fmt::Display) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// A progress line on stderr (`--progress`): per table, rows done (of the
/// total when the server said it) and bytes down, rewritten in place;
/// ended by a newline when the sync finishes or fails.
pub(crate) struct ProgressLine {
    /// Per table: rows done and bytes down so far.
    tables: std::sync::Mutex<BTreeMap<String, (u64, u64)>>,
}

impl ProgressLine {
    pub(crate) fn new() -> Self {
        Self {
            tables: std::sync::Mutex::new(BTreeMap::new()),
        }
    }
}

/// Bytes as B, KiB or MiB.
pub(crate) fn human_bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / f64::from(1 << 20)),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / f64::from(1 << 10)),
        n => format!("{n} B"),
    }
}

impl EventListener for ProgressLine {
    fn on_event(&self, event: SyncEvent) {
        let mut tables = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        match event {
            SyncEvent::TableProgress {
                table,
                rows_done,
                rows_total,
                bytes_down,
                ..
            } => {
                tables.insert(table.clone(), (rows_done, bytes_down));
                let rows: u64 = tables.values().map(|t| t.0).sum();
                let bytes: u64 = tables.values().map(|t| t.1).sum();
                let of = rows_total.map(|t| format!("/{t}")).unwrap_or_default();
                // \r and a clear to the end of the line: one line, rewritten.
                let _ = std::io::Write::write_all(
                    &mut std::io::stderr().lock(),
                    format!(
                        "\rsyncing {table}: {rows_done}{of} rows | total {rows} rows, {} down\x1b[K",
                        human_bytes(bytes)
                    )
                    .as_bytes(),
                );
            }
            SyncEvent::SyncFinished { .. } | SyncEvent::SyncFailed { .. } if !tables.is_empty() => {
                tables.clear();
                err("");
            }
            _ => {}
        }
    }
}

/// Exit code of a refusal by the server's scope.
pub(crate) const FORBIDDEN: u8 = 11;

/// Exit code of an error kind (documented in README and main.rs).
pub fn exit_code(kind: ErrorKind) -> u8 {
    match kind {
        ErrorKind::Forbidden => FORBIDDEN,
        ErrorKind::Internal => 1,
        ErrorKind::InvalidInput => 2,
        ErrorKind::RecordNotFound => 3,
        ErrorKind::Conflict => 4,
        ErrorKind::NetworkUnavailable => 5,
        ErrorKind::Unauthorized => 6,
        ErrorKind::PendingUploads => 7,
        ErrorKind::Storage => 8,
        ErrorKind::WrongKey => 10,
    }
}

/// Exit code of a sync the scheduler's conditions did not let start: 5 when
/// the network is unavailable (as a failed sync), else 9.
pub(crate) const SYNC_BLOCKED: u8 = 9;

/// Reports a sync that did not start, and why; the exit code.
pub(crate) fn blocked(json: bool, blocker: Blocker, message: &str) -> ExitCode {
    let (kind, code) = match blocker {
        Blocker::NetworkUnavailable => (
            "network_unavailable",
            exit_code(ErrorKind::NetworkUnavailable),
        ),
        _ => ("sync_blocked", SYNC_BLOCKED),
    };
    if json {
        out(serde_json::json!({"error": {"kind": kind, "blocker": blocker, "message": message}}));
    }
    err(format_args!("fieldsync device: {message}"));
    ExitCode::from(code)
}

pub(crate) fn sync_text(report: &SyncReport) -> String {
    let mut out = format!(
        "synced in {} ms: {} change(s) uploaded, {} conflict(s), {} rejected, {} page(s), {} bytes down",
        report.duration_ms,
        report.uploaded,
        report.conflicts.len(),
        report.rejected.len(),
        report.pages(),
        report.bytes_down
    );
    for t in &report.tables {
        if t.rows_upserted + t.rows_removed > 0 {
            out.push_str(&format!(
                "\n  {}: {} row(s) in, {} removed",
                t.table, t.rows_upserted, t.rows_removed
            ));
        }
    }
    for c in &report.conflicts {
        out.push_str(&format!(
            "\n  conflict: {}/{}: {}",
            c.table, c.record_id, c.message
        ));
    }
    for r in &report.rejected {
        out.push_str(&format!(
            "\n  rejected: {}/{}: {}",
            r.table, r.record_id, r.message
        ));
    }
    out
}

/// What the command line says of an error: the core's words, with the
/// flag to use where the core says what to do.
pub(crate) fn message(e: &Error) -> String {
    match e {
        Error::PendingUploads { count } => format!(
            "reset refused: {count} unsynced change(s) would be lost; \
             `fieldsync device reset --force` discards them"
        ),
        other => other.to_string(),
    }
}

/// Reports an error: a plain line on stderr, and with `--json` the error
/// as JSON on stdout too; the exit code of its kind.
pub(crate) fn fail(json: bool, e: &Error) -> ExitCode {
    let kind = e.kind();
    if json {
        let mut body = serde_json::json!({"error": {"kind": kind.as_str(), "message": message(e)}});
        if let Error::PendingUploads { count } = e {
            body["error"]["pending_uploads"] = (*count).into();
        }
        out(body);
    }
    err(format_args!("fieldsync device: {}", message(e)));
    ExitCode::from(exit_code(kind))
}

/// A `--where` value (online lists, whose tables may be outside the
/// profile): JSON when it parses as a scalar, else text.
pub(crate) fn parse_value(v: &str) -> Value {
    match serde_json::from_str::<serde_json::Value>(v) {
        Ok(j) if !j.is_object() && !j.is_array() => {
            Value::from_json(&j).unwrap_or(Value::Text(v.to_owned()))
        }
        _ => Value::Text(v.to_owned()),
    }
}

/// `--data` and `--set` fields of a write to `table`: `--set` values are
/// read as the column's kind says (see [`Value::parse_as`]); a column the
/// profile does not sync is left to the engine to refuse.
pub(crate) fn parse_fields(
    engine: &Engine,
    table: &str,
    set: &[String],
    data: Option<&str>,
) -> Result<BTreeMap<String, Value>, Error> {
    let kinds: BTreeMap<String, fieldsync_core::profile::ColumnKind> = engine
        .profile()
        .and_then(|p| p.table(table).cloned())
        .map(|t| t.columns.into_iter().map(|c| (c.name, c.kind)).collect())
        .unwrap_or_default();
    let mut fields = BTreeMap::new();
    if let Some(data) = data {
        let text;
        let data = match data.strip_prefix('@') {
            Some(path) => {
                text = std::fs::read_to_string(path)
                    .map_err(|e| Error::InvalidInput(format!("cannot read {path}: {e}")))?;
                text.as_str()
            }
            None => data,
        };
        let obj: serde_json::Map<String, serde_json::Value> = serde_json::from_str(data)
            .map_err(|e| Error::InvalidInput(format!("--data must be a JSON object: {e}")))?;
        for (k, v) in obj {
            let v = Value::from_json(&v)
                .ok_or_else(|| Error::InvalidInput(format!("field '{k}' must be a scalar")))?;
            fields.insert(k, v);
        }
    }
    for item in set {
        let (k, v) = item
            .split_once('=')
            .ok_or_else(|| Error::InvalidInput(format!("--set '{item}' is not COLUMN=VALUE")))?;
        let value = match kinds.get(k) {
            Some(kind) => Value::parse_as(*kind, v)
                .map_err(|why| Error::InvalidInput(format!("--set {k}: {why}")))?,
            None => parse_value(v),
        };
        fields.insert(k.to_owned(), value);
    }
    Ok(fields)
}

pub(crate) fn print<T: Serialize>(json: bool, value: &T, text: impl FnOnce() -> String) {
    if json {
        match serde_json::to_string_pretty(value) {
            Ok(s) => out(s),
            Err(e) => err(format_args!("fieldsync device: cannot encode output: {e}")),
        }
    } else {
        let text = text();
        if !text.is_empty() {
            out(text);
        }
    }
}

pub(crate) fn format_record(r: &fieldsync_core::Record) -> String {
    let mut out = format!("{}/{} (version {})\n", r.table, r.id, r.version);
    for (k, v) in &r.fields {
        out.push_str(&format!("  {k}: {}\n", v.to_json()));
    }
    out.trim_end().to_owned()
}

pub(crate) fn when(ms: Option<i64>) -> String {
    ms.map(fieldsync_core::time::format_datetime)
        .unwrap_or_else(|| "never".into())
}
