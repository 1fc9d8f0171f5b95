//! Which database the servers of a test use. By default each server gets
//! the embedded SQLite database in its data directory. When the test
//! command runs the suites against PostgreSQL (`scripts/with-postgres.sh`
//! sets `FIELDSYNC_TEST_POSTGRES` to the URL of a throwaway cluster on
//! loopback), each server data directory gets a PostgreSQL database of its
//! own instead, created on first use and remembered in the directory, so a
//! restarted server finds its data again.

#![allow(dead_code)]

use std::path::Path;

/// Base URL of the test PostgreSQL cluster, when the suites run against it.
pub fn postgres_base() -> Option<String> {
    std::env::var("FIELDSYNC_TEST_POSTGRES")
        .ok()
        .filter(|s| !s.is_empty())
}

/// `base` with its database name replaced by `name`.
pub fn with_database(base: &str, name: &str) -> String {
    let (url, query) = match base.split_once('?') {
        Some((u, q)) => (u, Some(q)),
        None => (base, None),
    };
    let scheme_end = url.find("://").map_or(0, |i| i + 3);
    let root = match url[scheme_end..].find('/') {
        Some(i) => &url[..scheme_end + i],
        None => url,
    };
    match query {
        Some(q) => format!("{root}/{name}?{q}"),
        None => format!("{root}/{name}"),
    }
}

/// Runs blocking PostgreSQL client work off the async runtime.
pub fn blocking_pg<T: Send + 'static>(
    url: &str,
    f: impl FnOnce(&mut postgres::Client) -> T + Send + 'static,
) -> T {
    let url = url.to_owned();
    std::thread::spawn(move || {
        let mut client = postgres::Client::connect(&url, postgres::NoTls)
            .unwrap_or_else(|e| panic!("connect to test PostgreSQL {url}: {e}"));
        f(&mut client)
    })
    .join()
    .expect("PostgreSQL helper thread")
}

/// Creates a fresh database on the test cluster; its URL.
pub fn fresh_database(base: &str) -> String {
    let name = format!("fs_{:016x}", rand::random::<u64>());
    let create = format!("CREATE DATABASE {name}");
    blocking_pg(base, move |c| {
        c.batch_execute(&create)
            .unwrap_or_else(|e| panic!("create test database: {e}"))
    });
    with_database(base, &name)
}

/// The database URL of the server whose data directory is `data_dir`:
/// `None` for the embedded SQLite default.
pub fn database_url(data_dir: &Path) -> Option<String> {
    let base = postgres_base()?;
    std::fs::create_dir_all(data_dir).expect("data dir");
    let marker = data_dir.join("postgres-url");
    if let Ok(url) = std::fs::read_to_string(&marker) {
        return Some(url);
    }
    let url = fresh_database(&base);
    std::fs::write(&marker, &url).expect("remember the test database");
    Some(url)
}

/// A server configuration on the back end the suites run against.
pub fn server_config(data_dir: &Path, admin_token: &str) -> fieldsync_server::ServerConfig {
    let mut config = fieldsync_server::ServerConfig::new(data_dir, admin_token);
    config.database_url = database_url(data_dir);
    // The test cluster's certificate authority (`scripts/with-postgres.sh`);
    // spawned servers read the same variable themselves.
    config.database_ca_pem = std::env::var("FIELDSYNC_DATABASE_CA_FILE")
        .ok()
        .map(|f| std::fs::read_to_string(f).expect("the database CA file"));
    config
}
