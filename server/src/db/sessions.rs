//! Admin console sessions.

use crate::sql::{Conn, int, text};
use crate::store_error::StoreResult;

use super::backend::Db;
use super::tokens::{hash_token, random_token};

/// A signed-in admin web console session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleSession {
    /// Who signed in: `admin token` or `user <id>`.
    pub admin: String,
    /// The session's anti-forgery token, embedded in every console form.
    pub csrf_token: String,
}

/// Ends the console sessions an admin user opened (see
/// `console::auth::login`, which names them `user {id}`).
pub(super) fn end_console_sessions(c: &mut dyn Conn, user_id: &str) -> StoreResult<()> {
    c.execute(
        "DELETE FROM _fs_console_sessions WHERE admin = ?",
        &[text(format!("user {user_id}"))],
    )?;
    Ok(())
}

impl Db {
    /// Opens a console session for `admin`, valid for `ttl_ms`; returns the
    /// session id (only its hash is stored) and its anti-forgery token.
    /// Expired sessions are removed on the way.
    pub fn create_console_session(
        &self,
        admin: &str,
        ttl_ms: i64,
    ) -> StoreResult<(String, String)> {
        let id = random_token();
        let csrf = random_token();
        let now = self.now_ms();
        self.write(|c| {
            c.execute(
                "DELETE FROM _fs_console_sessions WHERE expires_ms <= ?",
                &[int(now)],
            )?;
            c.execute(
                "INSERT INTO _fs_console_sessions (id_hash, csrf_token, admin, created_at, expires_ms) VALUES (?, ?, ?, ?, ?)",
                &[
                    text(hash_token(&id)),
                    text(csrf.clone()),
                    text(admin),
                    text(self.now_text()),
                    int(now.saturating_add(ttl_ms)),
                ],
            )?;
            Ok(())
        })?;
        Ok((id, csrf))
    }

    /// The live console session with this id.
    pub fn console_session(&self, session_id: &str) -> StoreResult<Option<ConsoleSession>> {
        let hash = hash_token(session_id);
        let now = self.now_ms();
        self.read(|c| {
            c.query_opt(
                "SELECT admin, csrf_token FROM _fs_console_sessions WHERE id_hash = ? AND expires_ms > ?",
                &[text(hash.clone()), int(now)],
            )?
            .map(|r| {
                Ok(ConsoleSession {
                    admin: r.text(0)?,
                    csrf_token: r.text(1)?})
            })
            .transpose()
        })
    }

    /// Ends a console session (signing out).
    pub fn delete_console_session(&self, session_id: &str) -> StoreResult<()> {
        let hash = hash_token(session_id);
        self.write(|c| {
            c.execute(
                "DELETE FROM _fs_console_sessions WHERE id_hash = ?",
                &[text(hash.clone())],
            )?;
            Ok(())
        })
    }
}
