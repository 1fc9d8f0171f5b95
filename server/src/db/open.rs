//! Opening a database: creating or migrating the server's schema and the
//! data model's tables, the default profile, and the PostgreSQL start-up
//! under an advisory lock.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fieldsync_protocol::profile::{DataModel, OfflineProfile};
use fieldsync_protocol::time::format_datetime;
use fieldsync_protocol::{Clock, SystemClock};
use rusqlite::TransactionBehavior;

use crate::schema;
use crate::sql::PG_MIGRATION_LOCK;
use crate::sql::{Conn, PgClient, PgConn, SqliteConn, text};
use crate::store_error::{StoreError, StoreResult};

use super::backend::{Backend, DatabaseUrl, Db, PG_MIGRATION_WAIT, PgPool, open_connection};

/// Creates the schema and the default profile in a fresh transaction; the
/// model in force.
pub(super) fn prepare(
    c: &mut dyn Conn,
    model: &DataModel,
    default_profile: &OfflineProfile,
    now: &str,
) -> StoreResult<crate::model::ModelVersion> {
    let in_force = prepare_schema(c, model, default_profile, now)?;
    for profile in stored_profiles(c)? {
        schema::ensure_rule_indexes(c, &in_force.model, &profile)?;
    }
    Ok(in_force)
}

/// The schema, the model in force (`model` is the one given at start, see
/// [`crate::model::at_start`]) and the default profile, without the
/// rules' indexes.
pub(super) fn prepare_schema(
    c: &mut dyn Conn,
    model: &DataModel,
    default_profile: &OfflineProfile,
    now: &str,
) -> StoreResult<crate::model::ModelVersion> {
    schema::migrate_own(c)?;
    let in_force = crate::model::at_start(c, model, now)?;
    schema::apply_model(c, &in_force.model, None)?;
    let model = &in_force.model;
    let has_profile = c.exists(
        "SELECT 1 FROM _fs_profiles WHERE name = ?",
        &[text(default_profile.name.clone())],
    )?;
    if !has_profile && default_profile.validate(model).is_err() {
        // A company's own model without the Field Service tables: users
        // are given a profile of that model by name.
        tracing::info!(
            profile = %default_profile.name,
            "the built-in profile does not fit the data model in force; not stored"
        );
        return Ok(in_force);
    }
    if !has_profile {
        let body = serde_json::to_string(default_profile)?;
        c.execute(
            "INSERT INTO _fs_profiles (name, version, body, updated_at) VALUES (?, 1, ?, ?)",
            &[text(default_profile.name.clone()), text(body), text(now)],
        )?;
    }
    Ok(in_force)
}

/// Every stored profile that parses (one that no longer does is reported
/// when it is used). Their rules' indexes are made at start-up, so
/// databases from before an index existed gain it.
pub(super) fn stored_profiles(c: &mut dyn Conn) -> StoreResult<Vec<OfflineProfile>> {
    let bodies = c.query("SELECT body FROM _fs_profiles ORDER BY name", &[])?;
    let mut out = Vec::new();
    for r in &bodies {
        if let Ok(profile) = serde_json::from_str::<OfflineProfile>(&r.text(0)?) {
            out.push(profile);
        }
    }
    Ok(out)
}

impl Db {
    /// Opens (creating and migrating) the embedded SQLite database in
    /// `data_dir`.
    pub fn open(
        data_dir: &Path,
        model: DataModel,
        default_profile: &OfflineProfile,
    ) -> StoreResult<Db> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            StoreError::internal(format!("cannot create {}: {e}", data_dir.display()))
        })?;
        Self::open_url(
            &DatabaseUrl::Sqlite(data_dir.join("fieldsync.db")),
            model,
            default_profile,
            None,
            Arc::new(SystemClock),
        )
    }

    /// Opens (creating and migrating) the database at `url`, on `clock`
    /// (every time the server records or compares, "today" in relative-date
    /// filters included). A PostgreSQL server's certificate is verified
    /// against Mozilla's roots and the authorities of `pg_ca_pem` (see
    /// [`crate::pgtls`]).
    pub fn open_url(
        url: &DatabaseUrl,
        model: DataModel,
        default_profile: &OfflineProfile,
        pg_ca_pem: Option<&str>,
        clock: Arc<dyn Clock>,
    ) -> StoreResult<Db> {
        model.validate()?;
        let now = format_datetime(clock.now_ms());
        let (backend, in_force) = match url {
            DatabaseUrl::Sqlite(path) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|e| {
                        StoreError::internal(format!("cannot create {}: {e}", dir.display()))
                    })?;
                }
                let mut writer = open_connection(path)?;
                let tx = writer.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let in_force = prepare(&mut SqliteConn(&tx), &model, default_profile, &now)?;
                tx.commit()?;
                (
                    Backend::Sqlite {
                        path: path.clone(),
                        writer: Mutex::new(writer),
                        readers: Mutex::new(Vec::new()),
                    },
                    in_force,
                )
            }
            DatabaseUrl::Postgres(url) => {
                // The blocking client runs its own small runtime: connect on
                // a plain thread, whatever thread opens the database.
                let model = model.clone();
                let default_profile = default_profile.clone();
                let url = url.clone();
                let tls = crate::pgtls::RustlsConnect::new(pg_ca_pem)?;
                std::thread::spawn(move || {
                    Self::open_postgres(&url, tls, &model, &default_profile, &now)
                })
                .join()
                .map_err(|_| StoreError::internal("opening PostgreSQL panicked"))??
            }
        };
        Ok(Db {
            clock,
            model: std::sync::RwLock::new(Arc::new(in_force)),
            backend,
            selections: Default::default(),
        })
    }

    /// Takes the migration lock, polling for it. A session blocked in
    /// `pg_advisory_lock` stays in a statement, and `CREATE INDEX
    /// CONCURRENTLY` waits for every such statement to end: the instance
    /// building the rule indexes under the lock and the one waiting for it
    /// would wait for each other (PostgreSQL reports `40P01`). Between two
    /// tries this session runs nothing, so the build never waits for it.
    pub(super) fn take_migration_lock(client: &mut PgClient) -> StoreResult<()> {
        let deadline = std::time::Instant::now() + PG_MIGRATION_WAIT;
        loop {
            let row = client.query_one("SELECT pg_try_advisory_lock($1)", &[&PG_MIGRATION_LOCK])?;
            if row.try_get::<_, bool>(0)? {
                return Ok(());
            }
            if std::time::Instant::now() >= deadline {
                return Err(StoreError::internal(format!(
                    "another instance has been migrating the database for {} s; gave up waiting",
                    PG_MIGRATION_WAIT.as_secs()
                )));
            }
            let jitter = u64::from(rand::random::<u8>() % 100);
            std::thread::sleep(Duration::from_millis(100 + jitter));
        }
    }

    pub(super) fn open_postgres(
        url: &str,
        tls: crate::pgtls::RustlsConnect,
        model: &DataModel,
        default_profile: &OfflineProfile,
        now: &str,
    ) -> StoreResult<(Backend, crate::model::ModelVersion)> {
        let config: postgres::Config = url
            .parse()
            .map_err(|e| StoreError::internal(format!("the PostgreSQL URL does not parse: {e}")))?;
        let pool = PgPool::new(config, tls);
        let mut client = pool.get()?;
        Self::take_migration_lock(&mut client)?;
        let migrated = (|| -> StoreResult<crate::model::ModelVersion> {
            client.batch_execute("BEGIN")?;
            let done = prepare_schema(&mut PgConn::new(&mut client), model, default_profile, now)
                .and_then(|in_force| {
                    Ok((in_force, stored_profiles(&mut PgConn::new(&mut client))?))
                });
            client.batch_execute(if done.is_ok() { "COMMIT" } else { "ROLLBACK" })?;
            // The rules' indexes after the commit, concurrently: instances
            // already serving keep writing while they build.
            let (in_force, profiles) = done?;
            schema::build_model_indexes_concurrently(&mut client, &in_force.model)?;
            for profile in profiles {
                schema::build_rule_indexes_concurrently(&mut client, &in_force.model, &profile)?;
            }
            Ok(in_force)
        })();
        client.execute("SELECT pg_advisory_unlock($1)", &[&PG_MIGRATION_LOCK])?;
        let in_force = migrated?;
        pool.put(client);
        Ok((Backend::Postgres(pool), in_force))
    }
}
