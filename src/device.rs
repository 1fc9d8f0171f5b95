//! `fieldsync device`: a headless device on the same core as the apps.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use std::sync::Arc;

use crate::device_io::{
    JsonLines, ProgressLine, StatusOut, blocked, exit_code, fail, format_record, out, parse_fields,
    parse_value, print, sync_text, when,
};
use clap::Subcommand;
use fieldsync_core::{
    DatabaseKey, Engine, EngineConfig, Error, ErrorKind, NetworkType, OnlineFilter, OsNetwork,
    SyncNowOutcome,
};

#[derive(clap::Args)]
pub struct DeviceArgs {
    /// Path of the device database.
    #[arg(long, env = "FIELDSYNC_DB", default_value = "fieldsync-device.db")]
    db: PathBuf,
    /// Base URL of the sync server.
    #[arg(
        long,
        env = "FIELDSYNC_SERVER",
        default_value = "http://127.0.0.1:8080"
    )]
    server: String,
    /// The user's bearer token.
    #[arg(long, env = "FIELDSYNC_TOKEN", hide_env_values = true)]
    token: String,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// A file holding the database's 32-byte key as 64 hexadecimal digits
    /// (for example `openssl rand -hex 32 > key`): the database is encrypted
    /// with it. Without it the database is plain.
    #[arg(long, env = "FIELDSYNC_KEY_FILE", value_name = "PATH")]
    key_file: Option<PathBuf>,
    /// Rows per pull page.
    #[arg(long, default_value_t = fieldsync_core::protocol::DEFAULT_PAGE_SIZE)]
    page_size: u32,
    /// Network check timeout in milliseconds: no answer to the probe in
    /// time is "Network or Service Unavailable" (exit 5).
    #[arg(long, default_value_t = fieldsync_core::network::DEFAULT_PROBE_TIMEOUT_MS)]
    probe_timeout_ms: u64,
    /// Longest one request to the server may take, in seconds, reading the
    /// answer included: a server that accepts the connection but does not
    /// answer fails the command with exit 5 after it.
    #[arg(long, env = "FIELDSYNC_REQUEST_TIMEOUT_SECS", default_value_t = 120)]
    request_timeout_secs: u64,
    /// Longest wait for a connection to the server, in seconds.
    #[arg(long, default_value_t = 10)]
    connect_timeout_secs: u64,
    /// A progress line on stderr while syncing (rows and bytes per table):
    /// `auto` shows it when stderr is a terminal.
    #[arg(long, global = true, value_enum, default_value_t = ProgressMode::Auto)]
    progress: ProgressMode,
    #[command(subcommand)]
    command: DeviceCommand,
}

/// `--progress`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ProgressMode {
    Auto,
    Always,
    Never,
}

#[derive(Subcommand)]
enum DeviceCommand {
    /// Upload pending changes and download the offline profile's tables.
    Sync {
        /// Only these tables (repeatable); all by default.
        #[arg(long = "table")]
        tables: Vec<String>,
    },
    /// Report the OS network, kept in the device database for every later command
    /// (prints the kept report without --type).
    Network {
        /// The kind of network; `none`: no connection.
        #[arg(long = "type", value_enum)]
        network_type: Option<NetworkKind>,
        /// The connection is metered (mobile data, a hotspot).
        #[arg(long)]
        metered: bool,
    },
    /// Show the sync icon state, offline status and device status (checks the network first).
    Status,
    /// Sync now, then keep syncing as the tables fall due, printing every
    /// event and status change as JSON lines, until interrupted (Ctrl-C or
    /// SIGTERM).
    Watch {
        /// Only these tables (repeatable) in the first sync; all by default.
        #[arg(long = "table")]
        tables: Vec<String>,
        /// Stop after the first sync.
        #[arg(long)]
        once: bool,
    },
    /// Refresh one table (and the tables whose rules reach it) now.
    Refresh { table: String },
    /// Online mode: read live server rows without storing them.
    Online {
        #[command(subcommand)]
        action: OnlineAction,
    },
    /// Show or change the sync settings.
    Settings {
        #[command(subcommand)]
        action: Option<SettingsAction>,
    },
    /// Read one record from the device.
    Get { table: String, id: String },
    /// List records of a table on the device.
    List {
        table: String,
        #[arg(long)]
        after: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Query a table on the device: a condition in the profile's filter
    /// language, an order, a limit and an offset.
    Query {
        table: String,
        /// The condition as filter JSON, e.g. '{"op":"eq","column":"status","value":"open"}'.
        #[arg(long = "where", value_name = "FILTER_JSON")]
        condition: Option<String>,
        /// Order by a column, `COLUMN` or `COLUMN:desc` (repeatable, in order).
        #[arg(long = "order", value_name = "COLUMN[:desc]")]
        order: Vec<String>,
        #[arg(long)]
        limit: Option<u32>,
        #[arg(long, default_value_t = 0)]
        offset: u32,
        /// Print only the number of rows the condition selects.
        #[arg(long)]
        count: bool,
    },
    /// Create or change a record on the device (uploaded at the next sync).
    Put {
        table: String,
        id: String,
        /// A field as column=value, read as the column's kind says
        /// (`notes=123` is text, `quantity=3` an integer; `null` clears it).
        #[arg(long = "set", value_name = "COLUMN=VALUE")]
        set: Vec<String>,
        /// Fields as a JSON object, or `@PATH` to read the object from a file.
        #[arg(long)]
        data: Option<String>,
    },
    /// Delete a record on the device (uploaded at the next sync).
    Delete { table: String, id: String },
    /// Apply several writes as one transaction, from a JSON file (`-`: standard
    /// input) holding a list of `{"op": "insert"|"update"|"put"|"delete",
    /// "table": ..., "id": ..., "fields": {...}}`. All of them commit on the
    /// device or none does; the next sync uploads them as one unit that the
    /// server applies whole or not at all.
    Transaction {
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// For crash tests: once write N (from 1) is applied, inside the
        /// open transaction, print `stopped after write N` on standard error
        /// and wait to be killed.
        #[arg(long, value_name = "N", hide = true)]
        stop_after_write: Option<usize>,
        /// For crash tests: once the transaction committed, print `stopped
        /// after commit` on standard error and wait to be killed.
        #[arg(long, hide = true)]
        stop_after_commit: bool,
    },
    /// Clear the offline database; refuses while changes wait for upload.
    Reset {
        /// Discard unsynced changes.
        #[arg(long)]
        force: bool,
    },
    /// Show the sync errors kept on the device.
    Errors {
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Change the database's key (from `--key-file`, or plain without it):
    /// to the key in `--new-key-file`, or to a plain database with `--decrypt`.
    Rekey {
        /// A file holding the new key as 64 hexadecimal digits.
        #[arg(long, value_name = "PATH", required_unless_present = "decrypt")]
        new_key_file: Option<PathBuf>,
        /// Store the database unencrypted.
        #[arg(long, conflicts_with = "new_key_file")]
        decrypt: bool,
    },
}

/// The kinds of network `device network --type` takes.
#[derive(Clone, Copy, clap::ValueEnum)]
enum NetworkKind {
    Wifi,
    Cellular,
    Ethernet,
    Other,
    None,
}

impl NetworkKind {
    fn report(self, metered: bool) -> OsNetwork {
        let network_type = match self {
            NetworkKind::Wifi => NetworkType::Wifi,
            NetworkKind::Cellular => NetworkType::Cellular,
            NetworkKind::Ethernet => NetworkType::Ethernet,
            NetworkKind::Other => NetworkType::Other,
            NetworkKind::None => NetworkType::None,
        };
        OsNetwork {
            connected: network_type != NetworkType::None,
            metered,
            network_type,
        }
    }
}

#[derive(Subcommand)]
enum OnlineAction {
    /// Read one live row.
    Get { table: String, id: String },
    /// List live rows, optionally filtered.
    List {
        table: String,
        /// An equality filter COLUMN=VALUE (repeatable); the value is read as JSON when it parses.
        #[arg(long = "where", value_name = "COLUMN=VALUE")]
        filters: Vec<String>,
        #[arg(long)]
        after: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

#[derive(Subcommand)]
enum SettingsAction {
    /// Print one setting.
    Get { name: String },
    /// Change one setting (wifi_only, online_mode_enabled, telemetry_enabled, frequency, smart_sync, background_sync).
    Set { name: String, value: String },
}

/// Runs a device command.
pub async fn run(args: DeviceArgs) -> ExitCode {
    let json = args.json;
    let key = match args.key_file.as_deref().map(read_key).transpose() {
        Ok(k) => k,
        Err(e) => return fail(json, &e),
    };
    if let DeviceCommand::Rekey {
        new_key_file,
        decrypt: _,
    } = &args.command
    {
        let rekeyed = new_key_file
            .as_deref()
            .map(read_key)
            .transpose()
            .and_then(|new| fieldsync_core::rekey_database(&args.db, key.as_ref(), new.as_ref()));
        return match rekeyed {
            Ok(()) => {
                print(json, &serde_json::json!({"rekeyed": true}), || {
                    "the database key was changed".into()
                });
                ExitCode::SUCCESS
            }
            Err(e) => fail(json, &e),
        };
    }
    let mut config = EngineConfig::new(&args.db, &args.server, &args.token);
    config.page_size = args.page_size;
    config.probe_timeout_ms = args.probe_timeout_ms;
    config.http_timeouts = fieldsync_core::HttpTimeouts {
        connect: std::time::Duration::from_secs(args.connect_timeout_secs.max(1)),
        request: std::time::Duration::from_secs(args.request_timeout_secs.max(1)),
    };
    // `device network` reports outlive the process: every command applies
    // the kept report.
    config.persist_os_network = true;
    config.encryption_key = key;
    let engine = match Engine::open(config) {
        Ok(e) => e,
        Err(e) => return fail(json, &e),
    };
    let progress = match args.progress {
        ProgressMode::Always => true,
        ProgressMode::Never => false,
        ProgressMode::Auto => {
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && matches!(
                    args.command,
                    DeviceCommand::Sync { .. } | DeviceCommand::Refresh { .. }
                )
        }
    };
    let _progress = progress.then(|| engine.add_event_listener(Arc::new(ProgressLine::new())));
    match run_command(&engine, args.command, json).await {
        Ok(code) => code,
        Err(e) => fail(json, &e),
    }
}

/// Ctrl-C and SIGTERM, caught from the moment this is made (so a signal
/// during the first sync of `watch` is not lost).
struct Interrupts {
    #[cfg(unix)]
    signals: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl Interrupts {
    fn catch() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Self {
                signals: signal(SignalKind::interrupt())
                    .and_then(|i| signal(SignalKind::terminate()).map(|t| (i, t)))
                    .ok(),
            }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// Waits for one; says which.
    async fn next(&mut self) -> &'static str {
        #[cfg(unix)]
        if let Some((interrupt, terminate)) = self.signals.as_mut() {
            return tokio::select! {
                _ = interrupt.recv() => "interrupt",
                _ = terminate.recv() => "terminate",
            };
        }
        let _ = tokio::signal::ctrl_c().await;
        "interrupt"
    }
}

/// The database key in the file at `path` (64 hexadecimal digits).
fn read_key(path: &std::path::Path) -> Result<DatabaseKey, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::InvalidInput(format!("cannot read {}: {e}", path.display())))?;
    DatabaseKey::from_hex(&text)
}

async fn run_command(
    engine: &Arc<Engine>,
    command: DeviceCommand,
    json: bool,
) -> Result<ExitCode, Error> {
    match command {
        DeviceCommand::Sync { tables } => {
            // The user's "sync now": interval and backoff do not count, the
            // app-active, network and Wi-Fi-only conditions do (the core's
            // scheduler decides).
            let only = (!tables.is_empty()).then_some(tables);
            let report = match engine.try_sync_now(only).await? {
                SyncNowOutcome::Synced { report } => report,
                SyncNowOutcome::Blocked { blocker, message } => {
                    return Ok(blocked(json, blocker, &message));
                }
            };
            print(json, &report, || sync_text(&report));
            if !report.conflicts.is_empty() {
                return Ok(ExitCode::from(exit_code(ErrorKind::Conflict)));
            }
            Ok(ExitCode::SUCCESS)
        }
        DeviceCommand::Network {
            network_type,
            metered,
        } => {
            if let Some(kind) = network_type {
                engine.set_os_network(kind.report(metered));
            } else if metered {
                return Err(Error::InvalidInput(
                    "--metered needs --type (wifi, cellular, ethernet, other)".into(),
                ));
            }
            let os = engine.network_status().os;
            print(json, &os, || {
                if os.connected {
                    format!(
                        "network: {}{}",
                        os.network_type.as_str(),
                        if os.metered { ", metered" } else { "" }
                    )
                } else {
                    "network: none".to_owned()
                }
            });
            Ok(ExitCode::SUCCESS)
        }
        DeviceCommand::Status => {
            engine.check_network().await;
            let out = StatusOut {
                device: engine.status()?,
                sync_status: engine.sync_status()?,
                offline_status: engine.offline_status()?,
            };
            let status = &out.device;
            let icon = &out.sync_status;
            print(json, &out, || {
                let mut text = format!(
                    "sync icon: {:?}{}\nnetwork: {:?}\ndevice {}\nprofile: {} (version {}, data model version {})\npending uploads: {}\ndatabase: {} bytes\n",
                    icon.icon,
                    icon.message
                        .as_deref()
                        .map(|m| format!(" ({m})"))
                        .unwrap_or_default(),
                    status.network.reachability,
                    status.device_id,
                    status.profile_name.as_deref().unwrap_or("none yet"),
                    status
                        .profile_version
                        .map(|v| v.to_string())
                        .unwrap_or_else(|| "-".into()),
                    status
                        .model_version
                        .map(|v| v.to_string())
                        .unwrap_or_else(|| "-".into()),
                    status.pending_uploads,
                    status.database_bytes
                );
                let pending: BTreeMap<&str, u64> = status
                    .tables
                    .iter()
                    .map(|t| (t.table.as_str(), t.pending_uploads))
                    .collect();
                for t in &out.offline_status {
                    text.push_str(&format!(
                        "  {:<28} {:>8} rows  last sync {}  next due {}{}\n",
                        t.table,
                        t.rows,
                        when(t.last_sync_at),
                        t.next_due_at
                            .map(fieldsync_core::time::format_datetime)
                            .unwrap_or_else(|| "manual".into()),
                        match pending.get(t.table.as_str()) {
                            Some(n) if *n > 0 => format!("  ({n} pending)"),
                            _ => String::new(),
                        }
                    ));
                }
                for (t, deps) in &status.dependency_closure {
                    if !deps.is_empty() {
                        text.push_str(&format!("  {t} syncs with {}\n", deps.join(", ")));
                    }
                }
                for e in &status.recent_errors {
                    text.push_str(&format!(
                        "  error: {} {}/{}: {}\n",
                        e.kind, e.table, e.record_id, e.message
                    ));
                }
                text.trim_end().to_owned()
            });
            Ok(ExitCode::SUCCESS)
        }
        DeviceCommand::Watch { tables, once } => {
            let mut interrupts = (!once).then(Interrupts::catch);
            let printer = Arc::new(JsonLines);
            let _events = engine.add_event_listener(printer.clone());
            let _status = engine.add_status_listener(printer);
            let only = (!tables.is_empty()).then_some(tables);
            let result = engine.try_sync_now(only).await;
            let report = match result? {
                SyncNowOutcome::Synced { report } => report,
                SyncNowOutcome::Blocked { blocker, message } => {
                    return Ok(blocked(false, blocker, &message));
                }
            };
            let Some(interrupts) = interrupts.as_mut() else {
                drop(_events);
                drop(_status);
                out(serde_json::json!({"event": "watch_finished", "report": report}));
                return Ok(ExitCode::SUCCESS);
            };
            // Keep syncing as the scheduler decides (intervals, network,
            // backoff) until interrupted.
            engine.start();
            let reason = interrupts.next().await;
            engine.stop();
            drop(_events);
            drop(_status);
            out(serde_json::json!({"event": "watch_stopped", "reason": reason}));
            Ok(ExitCode::SUCCESS)
        }
        DeviceCommand::Refresh { table } => {
            engine.check_network().await;
            let report = engine.refresh(&table).await?;
            print(json, &report, || {
                format!(
                    "refreshed {table}: {} table(s), {} page(s), {} bytes down",
                    report.tables.len(),
                    report.pages(),
                    report.bytes_down
                )
            });
            Ok(ExitCode::SUCCESS)
        }
        DeviceCommand::Online { action } => {
            engine.set_online_mode(true).await?;
            match action {
                OnlineAction::Get { table, id } => {
                    let record = engine.online_get(&table, &id).await?;
                    print(json, &record, || format_record(&record));
                }
                OnlineAction::List {
                    table,
                    filters,
                    after,
                    limit,
                } => {
                    let mut parsed = Vec::new();
                    for f in &filters {
                        let (column, value) = f.split_once('=').ok_or_else(|| {
                            Error::InvalidInput(format!("--where '{f}' is not COLUMN=VALUE"))
                        })?;
                        parsed.push(OnlineFilter {
                            column: column.to_owned(),
                            value: parse_value(value),
                        });
                    }
                    let page = engine.online_list(&table, parsed, after, limit).await?;
                    print(json, &page, || {
                        page.rows
                            .iter()
                            .map(format_record)
                            .collect::<Vec<_>>()
                            .join("\n")
                    });
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        DeviceCommand::Settings { action } => {
            match action {
                None => {
                    let s = engine.settings();
                    print(json, &s, || {
                        fieldsync_core::settings::SETTING_NAMES
                            .iter()
                            .map(|n| format!("{n} = {}", s.get(n).unwrap_or_default()))
                            .collect::<Vec<_>>()
                            .join("\n")
                    });
                }
                Some(SettingsAction::Get { name }) => {
                    let value = engine.settings().get(&name)?;
                    let mut obj = serde_json::Map::new();
                    obj.insert(name.clone(), serde_json::Value::String(value.clone()));
                    print(json, &obj, || value.clone());
                }
                Some(SettingsAction::Set { name, value }) => {
                    let s = engine.set_setting(&name, &value)?;
                    print(json, &s, || {
                        format!("{name} = {}", s.get(&name).unwrap_or_default())
                    });
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        DeviceCommand::Get { table, id } => {
            let record = engine.get(&table, &id)?;
            print(json, &record, || format_record(&record));
            Ok(ExitCode::SUCCESS)
        }
        DeviceCommand::List {
            table,
            after,
            limit,
        } => {
            let records = engine.list(&table, after.as_deref(), limit)?;
            print(json, &records, || {
                records
                    .iter()
                    .map(format_record)
                    .collect::<Vec<_>>()
                    .join("\n")
            });
            Ok(ExitCode::SUCCESS)
        }
        DeviceCommand::Query {
            table,
            condition,
            order,
            limit,
            offset,
            count,
        } => {
            let filter = condition
                .as_deref()
                .map(fieldsync_core::filter::Filter::from_json)
                .transpose()?;
            let mut by = Vec::new();
            for o in &order {
                let (column, descending) = match o.split_once(':') {
                    None => (o.as_str(), false),
                    Some((c, "desc")) => (c, true),
                    Some((c, "asc")) => (c, false),
                    Some(_) => {
                        return Err(Error::InvalidInput(format!(
                            "--order '{o}' is not COLUMN, COLUMN:asc or COLUMN:desc"
                        )));
                    }
                };
                by.push(fieldsync_core::OrderBy {
                    column: column.to_owned(),
                    descending,
                });
            }
            let query = fieldsync_core::Query {
                table,
                filter,
                order: by,
                limit,
                offset,
            };
            if count {
                let n = engine.count(&query)?;
                print(json, &serde_json::json!({ "count": n }), || n.to_string());
            } else {
                let records = engine.query(&query)?;
                print(json, &records, || {
                    records
                        .iter()
                        .map(format_record)
                        .collect::<Vec<_>>()
                        .join("\n")
                });
            }
            Ok(ExitCode::SUCCESS)
        }
        DeviceCommand::Put {
            table,
            id,
            set,
            data,
        } => {
            let fields = parse_fields(engine, &table, &set, data.as_deref())?;
            let record = engine.put(&table, &id, fields)?;
            print(json, &record, || format_record(&record));
            Ok(ExitCode::SUCCESS)
        }
        DeviceCommand::Delete { table, id } => {
            engine.delete(&table, &id)?;
            print(
                json,
                &serde_json::json!({"deleted": {"table": table, "id": id}}),
                || format!("deleted {table}/{id}"),
            );
            Ok(ExitCode::SUCCESS)
        }
        DeviceCommand::Transaction {
            file,
            stop_after_write,
            stop_after_commit,
        } => {
            let text = if file.as_os_str() == "-" {
                let mut text = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                    .map_err(|e| Error::InvalidInput(format!("cannot read standard input: {e}")))?;
                text
            } else {
                std::fs::read_to_string(&file).map_err(|e| {
                    Error::InvalidInput(format!("cannot read {}: {e}", file.display()))
                })?
            };
            let writes: Vec<fieldsync_core::Write> = serde_json::from_str(&text).map_err(|e| {
                Error::InvalidInput(format!(
                    "a transaction file is a JSON list of {{\"op\", \"table\", \"id\", \"fields\"}}: {e}"
                ))
            })?;
            let records = engine.transaction_with_probe(writes, &mut |i| {
                if stop_after_write == Some(i + 1) {
                    eprintln!("stopped after write {}", i + 1);
                    loop {
                        std::thread::sleep(std::time::Duration::from_secs(3600));
                    }
                }
            })?;
            if stop_after_commit {
                eprintln!("stopped after commit");
                loop {
                    std::thread::sleep(std::time::Duration::from_secs(3600));
                }
            }
            print(json, &records, || {
                records
                    .iter()
                    .map(|r| match r {
                        Some(r) => format_record(r),
                        None => "deleted".to_owned(),
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
            Ok(ExitCode::SUCCESS)
        }
        DeviceCommand::Reset { force } => {
            let report = engine.reset(force).await?;
            print(json, &report, || {
                format!(
                    "offline database cleared ({} unsynced change(s) discarded)",
                    report.discarded_changes
                )
            });
            Ok(ExitCode::SUCCESS)
        }
        // Handled before the engine opens: the database must be closed.
        DeviceCommand::Rekey { .. } => Err(Error::Internal("rekey needs a closed database".into())),
        DeviceCommand::Errors { limit } => {
            let errors = engine.sync_errors(limit)?;
            print(json, &errors, || {
                errors
                    .iter()
                    .map(|e| {
                        format!(
                            "{} {} {}/{} ({}): {}",
                            when(Some(e.at)),
                            e.kind,
                            e.table,
                            e.record_id,
                            e.action,
                            e.message
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
            Ok(ExitCode::SUCCESS)
        }
    }
}
