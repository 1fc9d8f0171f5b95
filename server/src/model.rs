//! The data model in force and its versions (`_fs_models`).
//!
//! Every published model is a numbered version; the newest is in force.
//! A version is published at start-up (the model file, or the built-in
//! Field Service model, when it differs from the one the database last
//! started with) or through the admin API. Publishing checks that the new
//! version may follow the one in force ([`DataModel::changes_to`]), that
//! every stored profile still validates against it (a table or column a
//! profile uses cannot be dropped), and that a column dropped earlier comes
//! back only with its old kind; then it migrates the data tables and
//! records the version, all in one write transaction, while the server
//! keeps serving. Instances sharing the database notice a newer version on
//! their next request (`Db::model`).

use std::sync::Arc;

use fieldsync_protocol::Value;
use fieldsync_protocol::model::ModelChange;
use fieldsync_protocol::profile::{DataModel, OfflineProfile};
use fieldsync_protocol::protocol::codes;
use serde::Serialize;

use crate::schema;
use crate::sql::{Conn, Dialect, text};
use crate::store_error::{StoreError, StoreResult};

/// Where a model version came from.
pub const SOURCE_START: &str = "start";
/// Published through the admin API or the console.
pub const SOURCE_ADMIN: &str = "admin";

/// A version of the data model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelVersion {
    pub version: i64,
    pub published_at: String,
    /// `start` (the model the server started with) or `admin`.
    pub source: String,
    /// What changed from the version before.
    pub changes: Vec<ModelChange>,
    #[serde(flatten)]
    pub model: DataModel,
}

/// What publishing a model did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Published {
    /// The version in force afterwards.
    pub version: i64,
    /// What changed (empty: the model was the one in force already).
    pub changes: Vec<ModelChange>,
}

fn invalid(message: String) -> StoreError {
    StoreError::invalid(codes::INVALID_MODEL, message)
}

fn version_from_row(r: &crate::sql::Row) -> StoreResult<ModelVersion> {
    let model: DataModel =
        serde_json::from_str(&r.text(1)?).map_err(StoreError::decode("a stored data model"))?;
    let changes = serde_json::from_str(&r.text(4)?).unwrap_or_default();
    Ok(ModelVersion {
        version: r.i64(0)?,
        model,
        source: r.text(2)?,
        published_at: r.text(3)?,
        changes,
    })
}

const COLUMNS: &str = "version, body, source, published_at, changes";

/// The newest version, if any.
pub fn latest(c: &mut dyn Conn) -> StoreResult<Option<ModelVersion>> {
    c.query_opt(
        &format!("SELECT {COLUMNS} FROM _fs_models ORDER BY version DESC LIMIT 1"),
        &[],
    )?
    .map(|r| version_from_row(&r))
    .transpose()
}

/// The newest version's number (0 when none).
pub fn latest_number(c: &mut dyn Conn) -> StoreResult<i64> {
    c.query_one("SELECT COALESCE(MAX(version), 0) FROM _fs_models", &[])?
        .i64(0)
}

/// One version.
pub fn version(c: &mut dyn Conn, version: i64) -> StoreResult<Option<ModelVersion>> {
    c.query_opt(
        &format!("SELECT {COLUMNS} FROM _fs_models WHERE version = ?"),
        &[Value::Integer(version)],
    )?
    .map(|r| version_from_row(&r))
    .transpose()
}

/// Every version, newest first.
pub fn versions(c: &mut dyn Conn) -> StoreResult<Vec<ModelVersion>> {
    c.query(
        &format!("SELECT {COLUMNS} FROM _fs_models ORDER BY version DESC"),
        &[],
    )?
    .iter()
    .map(version_from_row)
    .collect()
}

/// The model in force once the server starts with `given` (the model file,
/// or the built-in model): the first version of an empty database; a new
/// version when `given` differs from the model the database last started
/// with (refused as [`publish_in`] refuses); otherwise the newest version,
/// so versions published through the admin API outlive a restart.
pub fn at_start(c: &mut dyn Conn, given: &DataModel, now: &str) -> StoreResult<ModelVersion> {
    lock(c)?;
    let Some(current) = latest(c)? else {
        publish_in(c, given, SOURCE_START, now)?;
        return latest(c)?.ok_or_else(|| StoreError::internal("the model was not recorded"));
    };
    if current.model == *given {
        return Ok(current);
    }
    let last_start = c.query_opt(
        "SELECT body FROM _fs_models WHERE source = ? ORDER BY version DESC LIMIT 1",
        &[text(SOURCE_START)],
    )?;
    if let Some(r) = last_start {
        let body: DataModel =
            serde_json::from_str(&r.text(0)?).map_err(StoreError::decode("a stored data model"))?;
        if body == *given {
            return Ok(current);
        }
    }
    publish_in(c, given, SOURCE_START, now).map_err(StoreError::context(format!(
        "the data model given at start cannot follow version {} in force",
        current.version
    )))?;
    latest(c)?.ok_or_else(|| StoreError::internal("the model was not recorded"))
}

/// On PostgreSQL, waits for the model lock (the migration lock) until the
/// transaction ends, so two instances never publish at once, and writes
/// the guard row ([`guard`]).
fn lock(c: &mut dyn Conn) -> StoreResult<()> {
    if c.dialect() == Dialect::Postgres {
        c.execute(
            "SELECT pg_advisory_xact_lock(?)",
            &[Value::Integer(crate::sql::PG_MIGRATION_LOCK)],
        )?;
    }
    guard(c)
}

/// Writes one row that a model publication and a profile publication
/// both write: on PostgreSQL (snapshot isolation) the later of two
/// concurrent ones fails to serialize and is retried on a new snapshot,
/// so a profile can never be checked against a model that a publication
/// committed meanwhile (neither would see the other's write otherwise).
/// SQLite's single writer orders them anyway.
pub fn guard(c: &mut dyn Conn) -> StoreResult<()> {
    c.execute(GUARD_SQL, &[])?;
    Ok(())
}

/// The write of [`guard`].
const GUARD_SQL: &str = "INSERT INTO _fs_settings (key, value) VALUES ('model_guard', '') \
     ON CONFLICT (key) DO UPDATE SET value = excluded.value";

/// Publishes `new` as the next version inside the caller's write
/// transaction, migrating the data tables; nothing when it is the model in
/// force already.
pub fn publish_in(
    c: &mut dyn Conn,
    new: &DataModel,
    source: &str,
    now: &str,
) -> StoreResult<Published> {
    lock(c)?;
    new.validate()?;
    let current = latest(c)?;
    let (number, changes) = match &current {
        None => (1, Vec::new()),
        Some(cur) if cur.model == *new => {
            return Ok(Published {
                version: cur.version,
                changes: Vec::new(),
            });
        }
        Some(cur) => (cur.version + 1, cur.model.changes_to(new)?),
    };
    check_history(c, new)?;
    let profiles = c.query("SELECT name, body FROM _fs_profiles ORDER BY name", &[])?;
    for r in &profiles {
        let name = r.text(0)?;
        let Ok(profile) = serde_json::from_str::<OfflineProfile>(&r.text(1)?) else {
            continue;
        };
        if let Err(e) = profile.validate(new) {
            return Err(invalid(format!(
                "profile '{name}' would no longer be valid ({e}); change the profile first"
            )));
        }
    }
    schema::apply_model(c, new, current.as_ref().map(|v| &v.model))?;
    let body = serde_json::to_string(new)?;
    let changes_json = serde_json::to_string(&changes)?;
    c.execute(
        "INSERT INTO _fs_models (version, body, source, published_at, changes) VALUES (?, ?, ?, ?, ?)",
        &[
            Value::Integer(number),
            text(body),
            text(source),
            text(now),
            text(changes_json),
        ],
    )?;
    Ok(Published {
        version: number,
        changes,
    })
}

/// A column dropped by an earlier version keeps its data in the database:
/// it may come back only with the kind it had.
fn check_history(c: &mut dyn Conn, new: &DataModel) -> StoreResult<()> {
    for old in versions(c)? {
        for t in &new.tables {
            let Some(ot) = old.model.table(&t.name) else {
                continue;
            };
            for col in &t.columns {
                if let Some(oc) = ot.column(&col.name)
                    && oc.kind != col.kind
                {
                    return Err(invalid(format!(
                        "column '{}.{}' was of kind {:?} in version {}, and the database still holds its values: give the new column another name",
                        t.name, col.name, oc.kind, old.version
                    )));
                }
            }
        }
    }
    Ok(())
}

/// The model in force, shared by the handlers.
pub type Shared = Arc<ModelVersion>;

#[cfg(test)]
mod tests {
    /// Two concurrent publications, one of a model and one of a profile,
    /// on PostgreSQL: the one whose snapshot predates the other's commit
    /// fails to serialize at the guard row (and `Db::write` runs it again
    /// on a new snapshot), instead of committing a profile checked against
    /// a model that is no longer in force.
    #[test]
    fn a_publication_on_a_stale_snapshot_fails_to_serialize_on_postgres() {
        let Some(db) = crate::db::test_support::fresh_postgres_db() else {
            return;
        };
        let failed = db.with_pg_client(|stale| {
            stale
                .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
                .expect("begin");
            stale
                .query_one("SELECT COALESCE(MAX(version), 0) FROM _fs_models", &[])
                .expect("the snapshot");
            db.with_pg_client(|other| {
                other
                    .batch_execute(&format!(
                        "BEGIN ISOLATION LEVEL REPEATABLE READ; {}; COMMIT",
                        super::GUARD_SQL
                    ))
                    .expect("the other publication commits");
            })
            .expect("a second connection");
            let err = stale
                .execute(super::GUARD_SQL, &[])
                .expect_err("a stale snapshot cannot write the guard");
            let _ = stale.batch_execute("ROLLBACK");
            crate::sql::pg_retryable(&err)
        });
        assert_eq!(failed, Some(true), "a retryable serialization failure");
    }
}
