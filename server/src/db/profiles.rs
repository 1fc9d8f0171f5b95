//! Offline profiles: stored, published (checked against the model in force)
//! and resolved for a user.

use fieldsync_protocol::profile::{OfflineProfile, SyncProfile, SyncTable};
use fieldsync_protocol::protocol::codes;

use crate::rules;
use crate::schema;
use crate::sql::int;
use crate::sql::{Dialect, text};
use crate::store_error::{StoreError, StoreResult};

use super::backend::{Backend, Db};
use super::users::User;

/// The most values one table's compiled rules may bind (see
/// `Db::check_rule_parameters`): twice this, plus a pull's own few, stays
/// under SQLite's 32,766.
pub const MAX_RULE_PARAMETERS: usize = 16_000;

impl Db {
    /// A stored profile and its version.
    pub fn profile(&self, name: &str) -> StoreResult<Option<(OfflineProfile, i64)>> {
        let row = self.read(|c| {
            c.query_opt(
                "SELECT body, version FROM _fs_profiles WHERE name = ?",
                &[text(name)],
            )
        })?;
        match row {
            Some(r) => Ok(Some((
                serde_json::from_str(&r.text(0)?)
                    .map_err(StoreError::decode("a stored profile"))?,
                r.i64(1)?,
            ))),
            None => Ok(None),
        }
    }

    /// Every stored profile with its version.
    pub fn profiles(&self) -> StoreResult<Vec<(OfflineProfile, i64)>> {
        let names: Vec<String> = self.read(|c| {
            c.query("SELECT name FROM _fs_profiles ORDER BY name", &[])?
                .iter()
                .map(|r| r.text(0))
                .collect()
        })?;
        let mut out = Vec::new();
        for n in names {
            if let Some(p) = self.profile(&n)? {
                out.push(p);
            }
        }
        Ok(out)
    }

    /// Validates and publishes a profile; returns its new version.
    pub fn put_profile(&self, profile: &OfflineProfile) -> StoreResult<i64> {
        let in_force = self.model()?;
        let model = &in_force.model;
        profile.validate(model)?;
        self.check_rule_parameters(profile)?;
        let body = serde_json::to_string(profile)?;
        if self.dialect() == Dialect::Postgres && body.contains("\\u0000") {
            return Err(StoreError::invalid(
                codes::INVALID_PROFILE,
                "a filter value holds U+0000, which this server's PostgreSQL storage cannot compare",
            ));
        }
        if let Backend::Postgres(pool) = &self.backend {
            let mut client = pool.get()?;
            let built = schema::build_rule_indexes_concurrently(&mut client, model, profile);
            pool.put(client);
            built?;
        }
        self.write(|c| {
            // The model may not change under the profile: a publication
            // checks the stored profiles, so the two take turns.
            crate::model::guard(c)?;
            if crate::model::latest_number(c)? != in_force.version {
                return Err(StoreError::conflict(codes::CONFLICT,
                    "the data model changed while the profile was checked; send it again",
                ));
            }
            schema::ensure_rule_indexes(c, model, profile)?;
            let current = c.query_opt(
                "SELECT version, body FROM _fs_profiles WHERE name = ?",
                &[text(profile.name.clone())],
            )?;
            match current {
                Some(r) if r.text(1)? == body => r.i64(0),
                Some(r) => {
                    let v = r.i64(0)? + 1;
                    c.execute(
                        "UPDATE _fs_profiles SET version = ?, body = ?, updated_at = ? WHERE name = ?",
                        &[int(v), text(body.clone()), text(self.now_text()), text(profile.name.clone())],
                    )?;
                    Ok(v)
                }
                None => {
                    c.execute(
                        "INSERT INTO _fs_profiles (name, version, body, updated_at) VALUES (?, 1, ?, ?)",
                        &[text(profile.name.clone()), text(body.clone()), text(self.now_text())],
                    )?;
                    Ok(1)
                }
            }
        })
    }

    /// Refuses a profile whose rules, once compiled for one table, bind
    /// more than [`MAX_RULE_PARAMETERS`] values: a pull binds them twice,
    /// and SQLite refuses a statement of more than 32,766 parameters
    /// (PostgreSQL 65,535), which would fail every pull of the table with a
    /// 500. A table's count includes the values of the tables its related
    /// rules reach.
    pub(super) fn check_rule_parameters(&self, profile: &OfflineProfile) -> StoreResult<()> {
        let resolved = profile.resolve(&self.model()?.model, 1, "_fs_check", Some("_fs_check"))?;
        let ctx = resolved.filter_context(self.now_ms());
        for table in &resolved.tables {
            let n = rules::compile_in(self.dialect(), &resolved, table, &ctx)
                .params
                .len();
            if n > MAX_RULE_PARAMETERS {
                return Err(StoreError::invalid(
                    codes::INVALID_PROFILE,
                    format!(
                        "table '{}': its rules hold {n} values once the tables its related rules reach are included; at most {MAX_RULE_PARAMETERS} are allowed",
                        table.name
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The profile issued to a user, resolved against the data model.
    pub fn sync_profile(&self, user: &User) -> StoreResult<SyncProfile> {
        // The profile and the newest model version in one read: every
        // request of a device resolves its profile.
        let (row, newest) = self.read(|c| {
            let row = c.query_opt(
                "SELECT body, version FROM _fs_profiles WHERE name = ?",
                &[text(user.profile.clone())],
            )?;
            Ok((row, crate::model::latest_number(c)?))
        })?;
        let row = row.ok_or_else(|| {
            StoreError::internal(format!("user's profile '{}' is missing", user.profile))
        })?;
        let profile: OfflineProfile =
            serde_json::from_str(&row.text(0)?).map_err(StoreError::decode("a stored profile"))?;
        let version = row.i64(1)?;
        let in_force = self.model_at(newest)?;
        let mut resolved = profile
            .resolve(&in_force.model, version, &user.id, user.team_id.as_deref())?
            .with_user_time_zone(user.time_zone.as_deref())?;
        resolved.model_version = in_force.version;
        Ok(resolved)
    }

    /// The table a device's pull or fetch asks for, in the profile it was
    /// issued: refused with 409 `profile_changed` when the device synced
    /// under another profile version (it fetches the profile again), 403 when
    /// the model has the table but the profile does not, 400 when no model
    /// table has that name.
    pub fn synced_table<'p>(
        &self,
        profile: &'p SyncProfile,
        device_version: Option<i64>,
        name: &str,
    ) -> StoreResult<&'p SyncTable> {
        if device_version.is_some_and(|v| v != profile.version) {
            return Err(StoreError::conflict(
                codes::PROFILE_CHANGED,
                format!(
                    "the offline profile is now at version {}; fetch it again",
                    profile.version
                ),
            ));
        }
        if let Some(table) = profile.table(name) {
            return Ok(table);
        }
        if self.model()?.model.table(name).is_some() {
            Err(StoreError::forbidden(format!(
                "table '{name}' is not in your offline profile"
            )))
        } else {
            Err(StoreError::invalid(
                codes::UNKNOWN_TABLE,
                format!("unknown table '{name}'"),
            ))
        }
    }
}
