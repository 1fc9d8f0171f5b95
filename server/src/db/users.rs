//! Users, their roles and bearer tokens (stored as SHA-256 hashes).

use fieldsync_protocol::protocol::codes;
use serde::{Deserialize, Serialize};

use crate::sql::{Conn, Row, opt_text, text};
use crate::store_error::{StoreError, StoreResult};

use super::backend::Db;
use super::sessions::end_console_sessions;
use super::tokens::{hash_token, user_token};

/// Roles of users.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A field technician: syncs the rows of an offline profile.
    Technician,
    /// A back-office user: reads and edits any row through the records API.
    Dispatcher,
    /// Everything a dispatcher can, plus the admin API.
    Admin,
}

impl Role {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Role::Technician => "technician",
            Role::Dispatcher => "dispatcher",
            Role::Admin => "admin",
        }
    }
    pub(super) fn parse(s: &str) -> Role {
        match s {
            "dispatcher" => Role::Dispatcher,
            "admin" => Role::Admin,
            _ => Role::Technician,
        }
    }
}

/// A user of the sync service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub id: String,
    pub name: String,
    pub role: Role,
    /// Name of the offline profile issued to this user.
    pub profile: String,
    /// The user's team ("rows of my team" filters), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team_id: Option<String>,
    /// The user's time zone (an IANA name), overriding the profile's for
    /// relative-date filters, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
}

/// The user with this id, inside the caller's transaction.
pub(super) fn user_by_id_in(c: &mut dyn Conn, id: &str) -> StoreResult<Option<User>> {
    c.query_opt(
        "SELECT id, name, role, profile, team_id, time_zone FROM _fs_users WHERE id = ?",
        &[text(id)],
    )?
    .as_ref()
    .map(user_from_row)
    .transpose()
}

pub(super) fn user_from_row(r: &Row) -> StoreResult<User> {
    Ok(User {
        id: r.text(0)?,
        name: r.text(1)?,
        role: Role::parse(&r.text(2)?),
        profile: r.text(3)?,
        team_id: r.opt_text(4)?,
        time_zone: r.opt_text(5)?,
    })
}

impl Db {
    /// The user holding this token.
    pub fn user_by_token(&self, token: &str) -> StoreResult<Option<User>> {
        let hash = hash_token(token);
        self.read(|c| {
            c.query_opt(
                "SELECT id, name, role, profile, team_id, time_zone FROM _fs_users WHERE token_hash = ?",
                &[text(hash.clone())],
            )?
            .as_ref()
            .map(user_from_row)
            .transpose()
        })
    }

    /// Creates a user and returns it with its new bearer token.
    pub fn create_user(
        &self,
        id: Option<String>,
        name: &str,
        role: Role,
        profile: &str,
        team_id: Option<String>,
    ) -> StoreResult<(User, String)> {
        self.create_user_in_zone(id, name, role, profile, team_id, None)
    }

    /// [`Db::create_user`] with the user's own time zone (an IANA name that
    /// overrides the profile's for relative-date filters).
    pub fn create_user_in_zone(
        &self,
        id: Option<String>,
        name: &str,
        role: Role,
        profile: &str,
        team_id: Option<String>,
        time_zone: Option<String>,
    ) -> StoreResult<(User, String)> {
        let id = id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        if id.is_empty() || id.len() > 128 {
            return Err(StoreError::invalid(
                codes::BAD_REQUEST,
                "a user id is 1 to 128 characters",
            ));
        }
        if name.trim().is_empty() {
            return Err(StoreError::invalid(
                codes::BAD_REQUEST,
                "a user needs a name",
            ));
        }
        let time_zone = time_zone.filter(|z| !z.is_empty());
        if let Some(zone) = &time_zone {
            fieldsync_protocol::profile::check_time_zone(zone)
                .map_err(|e| StoreError::invalid(codes::BAD_REQUEST, e.to_string()))?;
        }
        let token = user_token();
        let user = User {
            id,
            name: name.to_owned(),
            role,
            profile: profile.to_owned(),
            team_id: team_id.filter(|t| !t.is_empty()),
            time_zone,
        };
        self.write(|c| {
            if !c.exists("SELECT 1 FROM _fs_profiles WHERE name = ?", &[text(profile)])? {
                return Err(StoreError::invalid(
                    codes::BAD_REQUEST,
                    format!("no offline profile named '{profile}'"),
                ));
            }
            if c.exists("SELECT 1 FROM _fs_users WHERE id = ?", &[text(user.id.clone())])? {
                return Err(StoreError::conflict(codes::CONFLICT,
                    format!("user '{}' exists", user.id),
                ));
            }
            c.execute(
                "INSERT INTO _fs_users (id, name, role, profile, token_hash, created_at, team_id, time_zone) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                &[
                    text(user.id.clone()),
                    text(user.name.clone()),
                    text(user.role.as_str()),
                    text(user.profile.clone()),
                    text(hash_token(&token)),
                    text(self.now_text()),
                    opt_text(user.team_id.clone()),
                    opt_text(user.time_zone.clone()),
                ],
            )?;
            Ok(())
        })?;
        Ok((user, token))
    }

    /// Gives user `id` a new bearer token (returned once): the old one stops
    /// working at once, and the user's console sessions end. `None` when
    /// there is no such user.
    pub fn rotate_token(&self, id: &str) -> StoreResult<Option<(User, String)>> {
        let token = user_token();
        let user = self.write(|c| {
            let Some(user) = user_by_id_in(c, id)? else {
                return Ok(None);
            };
            c.execute(
                "UPDATE _fs_users SET token_hash = ? WHERE id = ?",
                &[text(hash_token(&token)), text(id)],
            )?;
            end_console_sessions(c, id)?;
            Ok(Some(user))
        })?;
        Ok(user.map(|u| (u, token)))
    }

    /// Deletes user `id`: its token stops working at once and its console
    /// sessions end. What it wrote stays (rows, the Sync Errors log,
    /// devices, telemetry). False when there is no such user.
    pub fn delete_user(&self, id: &str) -> StoreResult<bool> {
        self.write(|c| {
            let deleted = c.execute("DELETE FROM _fs_users WHERE id = ?", &[text(id)])? > 0;
            if deleted {
                end_console_sessions(c, id)?;
            }
            Ok(deleted)
        })
    }

    /// Every user.
    pub fn users(&self) -> StoreResult<Vec<User>> {
        self.read(|c| {
            c.query(
                "SELECT id, name, role, profile, team_id, time_zone FROM _fs_users ORDER BY name, id",
                &[],
            )?
            .iter()
            .map(user_from_row)
            .collect()
        })
    }

    /// The user with this id.
    pub fn user_by_id(&self, id: &str) -> StoreResult<Option<User>> {
        self.read(|c| user_by_id_in(c, id))
    }
}
