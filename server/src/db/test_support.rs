//! A PostgreSQL database for tests, when `FIELDSYNC_TEST_POSTGRES` names a
//! server.

use std::sync::Arc;

use fieldsync_protocol::SystemClock;

use super::*;

/// The test command's PostgreSQL cluster (`scripts/with-postgres.sh`
/// sets `FIELDSYNC_TEST_POSTGRES`); `None` without it.
pub(crate) fn postgres_base() -> Option<String> {
    std::env::var("FIELDSYNC_TEST_POSTGRES")
        .ok()
        .filter(|s| !s.is_empty())
}

/// A server database on a fresh PostgreSQL database of the test
/// command's cluster; `None` without the cluster.
pub(crate) fn fresh_postgres_db() -> Option<Db> {
    let base = postgres_base()?;
    let name = format!("fs_unit_{:016x}", rand::random::<u64>());
    let create = format!("CREATE DATABASE {name}");
    let admin = base.clone();
    std::thread::spawn(move || {
        let mut c = postgres::Client::connect(&admin, postgres::NoTls).expect("connect");
        c.batch_execute(&create).expect("create database");
    })
    .join()
    .expect("create thread");
    let (root, query) = match base.split_once('?') {
        Some((u, q)) => (u.to_owned(), format!("?{q}")),
        None => (base.clone(), String::new()),
    };
    let scheme_end = root.find("://").map_or(0, |i| i + 3);
    let host_end = root[scheme_end..]
        .find('/')
        .map_or(root.len(), |i| scheme_end + i);
    let url = format!("{}/{name}{query}", &root[..host_end]);
    let profile = crate::field_service_profile();
    // The test cluster's authority (`scripts/with-postgres.sh`).
    let ca = std::env::var("FIELDSYNC_DATABASE_CA_FILE")
        .ok()
        .map(|f| std::fs::read_to_string(f).expect("CA file"));
    let db = Db::open_url(
        &DatabaseUrl::parse(&url).expect("url"),
        crate::field_service_model(),
        &profile,
        ca.as_deref(),
        Arc::new(SystemClock),
    )
    .expect("open");
    Some(db)
}
