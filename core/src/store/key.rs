//! Encryption at rest: the key of the device database and the changes of key.
//!
//! The store is SQLCipher (AES-256 per page, with an HMAC per page) when the
//! app gives a [`DatabaseKey`]: 32 random bytes the app keeps in the
//! platform's key store (a key of the Android Keystore wraps it; the iOS
//! Keychain holds it) and hands to the engine at every open. It is given to
//! SQLCipher raw (`PRAGMA key = "x'<64 hex>'"`), so an open costs no
//! passphrase derivation. The key is never logged, never written to disk by
//! the engine, and wiped from the engine's memory when dropped.
//!
//! Every connection the store opens (writer, reader, checkpoint, the
//! evaluation of a settling pass) is keyed first and then reads the schema:
//! a wrong key, a missing key or a key for a plain file fails there, before
//! anything is written, as [`Error::WrongKey`].
//!
//! SQLCipher does not encrypt SQLite's temporary files, so an encrypted
//! store keeps them in memory (`temp_store = MEMORY`); a plain one keeps them
//! on disk beside the database, as before.
//!
//! [`rekey_database`] changes the key of a closed database: key to key in
//! place (`PRAGMA rekey`), plain to encrypted and back by exporting into a
//! new file that replaces the old one only once it opens with the new key.

use std::path::{Path, PathBuf};

use rusqlite::config::DbConfig;
use rusqlite::{Connection, ErrorCode};

use crate::error::{Error, Result};

/// The 32-byte key of an encrypted device database.
///
/// Its `Debug` prints no part of the key, and its bytes are overwritten with
/// zeros when it is dropped.
#[derive(Clone)]
pub struct DatabaseKey([u8; DatabaseKey::LEN]);

impl DatabaseKey {
    /// Length of a key, in bytes.
    pub const LEN: usize = 32;

    /// A key from its 32 bytes.
    pub fn from_bytes(bytes: [u8; Self::LEN]) -> DatabaseKey {
        DatabaseKey(bytes)
    }

    /// A key from a slice, which must hold exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<DatabaseKey> {
        let bytes: [u8; Self::LEN] = bytes.try_into().map_err(|_| {
            Error::InvalidInput(format!(
                "a database key is {} bytes, not {}",
                Self::LEN,
                bytes.len()
            ))
        })?;
        Ok(DatabaseKey(bytes))
    }

    /// A key from 64 hexadecimal digits (surrounding whitespace ignored).
    pub fn from_hex(hex: &str) -> Result<DatabaseKey> {
        let hex = hex.trim().as_bytes();
        if hex.len() != Self::LEN * 2 {
            return Err(Error::InvalidInput(format!(
                "a database key is {} hexadecimal digits, not {}",
                Self::LEN * 2,
                hex.len()
            )));
        }
        let mut bytes = [0u8; Self::LEN];
        for (i, pair) in hex.chunks_exact(2).enumerate() {
            let (Some(hi), Some(lo)) = (hex_digit(pair[0]), hex_digit(pair[1])) else {
                wipe(&mut bytes);
                return Err(Error::InvalidInput(
                    "a database key is hexadecimal digits only".into(),
                ));
            };
            bytes[i] = hi << 4 | lo;
        }
        let key = DatabaseKey(bytes);
        wipe(&mut bytes);
        Ok(key)
    }

    /// SQLCipher's raw-key literal, `x'<64 hex>'`, wiped when dropped.
    fn literal(&self) -> Secret {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut s = Vec::with_capacity(3 + Self::LEN * 2);
        s.extend_from_slice(b"x'");
        for b in self.0 {
            s.push(DIGITS[usize::from(b >> 4)]);
            s.push(DIGITS[usize::from(b & 0xf)]);
        }
        s.push(b'\'');
        Secret(s)
    }
}

impl std::fmt::Debug for DatabaseKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DatabaseKey(<redacted>)")
    }
}

impl Drop for DatabaseKey {
    fn drop(&mut self) {
        wipe(&mut self.0);
    }
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Overwrites `bytes` with zeros in a way the compiler keeps.
fn wipe(bytes: &mut [u8]) {
    for b in bytes.iter_mut() {
        // SAFETY: `b` is a valid, aligned, exclusive reference to a byte.
        unsafe { std::ptr::write_volatile(b, 0) };
    }
    std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
}

/// ASCII text holding key material, wiped when dropped.
struct Secret(Vec<u8>);

impl Secret {
    fn as_str(&self) -> &str {
        // Only ever built from ASCII digits and quotes.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        wipe(&mut self.0);
    }
}

/// The first bytes of every plain SQLite database file.
const PLAIN_HEADER: &[u8; 16] = b"SQLite format 3\0";

/// True when the file at `path` starts as a plain SQLite database does.
fn looks_plain(path: &Path) -> Option<bool> {
    use std::io::Read;
    let mut head = [0u8; 16];
    let mut file = std::fs::File::open(path).ok()?;
    file.read_exact(&mut head).ok()?;
    Some(&head == PLAIN_HEADER)
}

/// How long a connection waits for another connection's lock.
const BUSY_TIMEOUT: std::time::Duration = crate::wal::PATIENCE;

/// Opens the database at `path` with `key` (none: a plain database) and
/// reads its schema, so a wrong key fails here, before anything is written.
pub(super) fn open_keyed(path: &Path, key: Option<&DatabaseKey>) -> Result<Connection> {
    let conn = Connection::open(path)?;
    // Before the first read: another process may be writing or
    // checkpointing, and without a busy handler the read fails at once.
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // Until the key is known good, closing this connection must not
    // checkpoint the WAL into the file nor delete it.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)?;
    if let Some(key) = key {
        let pragma = Secret(format!("PRAGMA key = \"{}\"", key.literal().as_str()).into_bytes());
        conn.execute_batch(pragma.as_str())?;
    }
    let read = conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
        r.get::<_, i64>(0)
    });
    match read {
        Ok(_) => {
            conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, false)?;
            Ok(conn)
        }
        Err(rusqlite::Error::SqliteFailure(f, _)) if f.code == ErrorCode::NotADatabase => {
            Err(wrong_key(path, key.is_some()))
        }
        Err(e) => Err(e.into()),
    }
}

/// The error of a database that did not open with the key it was given.
fn wrong_key(path: &Path, keyed: bool) -> Error {
    match (keyed, looks_plain(path)) {
        (true, Some(true)) => {
            Error::WrongKey("the database is not encrypted, but a key was given".into())
        }
        (true, _) => Error::WrongKey("the database key is wrong".into()),
        (false, Some(false)) => Error::WrongKey(
            "the database is encrypted (or not a database), and no key was given".into(),
        ),
        (false, _) => Error::Storage("file is not a database".into()),
    }
}

/// Where SQLite keeps the temporary files of a connection with `key`: in
/// memory when the database is encrypted (SQLCipher does not encrypt them),
/// on disk otherwise (`store::place_temp_files`).
pub(super) fn temp_store(key: Option<&DatabaseKey>) -> &'static str {
    if key.is_some() { "MEMORY" } else { "FILE" }
}

/// Changes the key of the closed database at `path` from `current` to `new`
/// (`None`: not encrypted).
///
/// Key to key re-encrypts the file in place (`PRAGMA rekey`). Plain to
/// encrypted and encrypted to plain export the database into a new file
/// beside it (`sqlcipher_export`), open that with the new key, and only then
/// rename it over the old one, so a failure at any point leaves the old file
/// whole. Everything in the database, the pending uploads included, is kept.
///
/// The database must be closed (no `Engine` on it): an open one is refused
/// with [`Error::InvalidInput`] and left as it was. A wrong `current` key is
/// [`Error::WrongKey`], the file untouched.
pub fn rekey_database(
    path: &Path,
    current: Option<&DatabaseKey>,
    new: Option<&DatabaseKey>,
) -> Result<()> {
    if !path.is_file() {
        return Err(Error::InvalidInput(format!(
            "no database at {}",
            path.display()
        )));
    }
    let conn = open_keyed(path, current)?;
    conn.busy_timeout(std::time::Duration::from_millis(500))?;
    take_out_of_wal(&conn)?;
    match (current, new) {
        (None, None) => Ok(()),
        (Some(_), Some(new)) => {
            let pragma =
                Secret(format!("PRAGMA rekey = \"{}\"", new.literal().as_str()).into_bytes());
            conn.execute_batch(pragma.as_str())?;
            drop(conn);
            open_keyed(path, Some(new))?;
            Ok(())
        }
        (_, new) => {
            let exported = sibling(path, ".rekey");
            let result = export(conn, path, &exported, new);
            if result.is_err() {
                for suffix in ["", "-journal"] {
                    let _ = std::fs::remove_file(sibling(&exported, suffix));
                }
            }
            result
        }
    }
}

/// Leaves WAL mode, which copies the WAL into the file and removes it; an
/// open database (another connection holds it) is refused.
fn take_out_of_wal(conn: &Connection) -> Result<()> {
    let refused = || {
        Error::InvalidInput("the database is open: close the engine before changing its key".into())
    };
    let mode: String = conn
        .query_row("PRAGMA journal_mode = DELETE", [], |r| r.get(0))
        .map_err(|e| match e.sqlite_error_code() {
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => refused(),
            _ => e.into(),
        })?;
    if !mode.eq_ignore_ascii_case("delete") {
        return Err(refused());
    }
    Ok(())
}

/// Exports the database of `conn` into `exported` under `new`, checks it
/// opens with `new`, and renames it over `path`.
fn export(conn: Connection, path: &Path, exported: &Path, new: Option<&DatabaseKey>) -> Result<()> {
    let _ = std::fs::remove_file(exported);
    let literal = new.map(DatabaseKey::literal);
    let attach_key = literal.as_ref().map(Secret::as_str).unwrap_or("");
    let target = exported
        .to_str()
        .ok_or_else(|| Error::InvalidInput("the database path is not UTF-8".into()))?;
    conn.execute(
        "ATTACH DATABASE ?1 AS rekeyed KEY ?2",
        rusqlite::params![target, attach_key],
    )?;
    drop(literal);
    let version: i64 = conn.query_row("PRAGMA main.user_version", [], |r| r.get(0))?;
    conn.query_row("SELECT sqlcipher_export('rekeyed')", [], |_| Ok(()))?;
    conn.execute_batch(&format!("PRAGMA rekeyed.user_version = {version}"))?;
    conn.execute_batch("DETACH DATABASE rekeyed")?;
    drop(conn);
    // The new file must open, whole, with the new key before it replaces
    // the old one.
    let check = open_keyed(exported, new)?;
    let verdict: String = check.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
    drop(check);
    if verdict != "ok" {
        return Err(Error::Storage(format!(
            "the re-encrypted copy failed its check: {verdict}"
        )));
    }
    std::fs::File::open(exported)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::Storage(format!("cannot sync {}: {e}", exported.display())))?;
    for suffix in ["-wal", "-shm"] {
        match std::fs::remove_file(sibling(path, suffix)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Error::Storage(format!(
                    "cannot remove the old {suffix}: {e}"
                )));
            }
        }
    }
    std::fs::rename(exported, path)
        .map_err(|e| Error::Storage(format!("cannot replace {}: {e}", path.display())))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // The rename is durable once the directory is synced.
        let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

/// `path` with `suffix` appended to its file name.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

#[cfg(test)]
mod tests;
