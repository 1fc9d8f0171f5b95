//! HTTPS with the default transport: which certificates a device trusts
//! (`EngineConfig::tls`), against a real server behind a TLS terminator on
//! loopback. The terminator presents a certificate for `localhost` and
//! `127.0.0.1` signed by a test authority (`tests/fixtures/tls`, valid until
//! 2126; the authority's key was not kept), so no public root trusts it.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::*;
use fieldsync_core::{Engine, EngineConfig, Error, ErrorKind, TlsRoots, TlsTrust, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

const TEST_CA: &str = include_str!("fixtures/tls/ca.pem");
const SERVER_CERT: &str = include_str!("fixtures/tls/server.pem");
const SERVER_KEY: &str = include_str!("fixtures/tls/server.key");

/// Accepts TLS on loopback with the test certificate and passes the
/// plain bytes on to `upstream` (the server's HTTP address). Returns the
/// port.
async fn tls_terminator(upstream: &str) -> u16 {
    let certs = CertificateDer::pem_slice_iter(SERVER_CERT.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("certificate");
    let key = PrivateKeyDer::from_pem_slice(SERVER_KEY.as_bytes()).expect("key");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let upstream = upstream.to_owned();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, upstream) = (acceptor.clone(), upstream.clone());
            tokio::spawn(async move {
                // A client that refuses the certificate ends the handshake.
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut server) = TcpStream::connect(&upstream).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut server).await;
            });
        }
    });
    port
}

struct Setup {
    server: Server,
    port: u16,
    token: String,
    dir: tempfile::TempDir,
}

async fn setup() -> Setup {
    let server = Server::start().await;
    let token = server.wide_technician("tech-tls").await;
    server.seed(&["tech-tls"], 20).await;
    let port = tls_terminator(&server.addr).await;
    Setup {
        server,
        port,
        token,
        dir: tempfile::tempdir().expect("dir"),
    }
}

impl Setup {
    fn engine(&self, db: &str, host: &str, tls: TlsTrust) -> Result<Arc<Engine>, Error> {
        let mut config = EngineConfig::new(
            self.dir.path().join(db),
            &format!("https://{host}:{}", self.port),
            &self.token,
        );
        config.tls = tls;
        Engine::open(config)
    }
}

fn trust(roots: TlsRoots, extra: Option<&str>) -> TlsTrust {
    TlsTrust {
        roots,
        extra_roots_pem: extra.map(str::to_owned),
    }
}

fn rows(report: &fieldsync_core::SyncReport) -> u64 {
    report.tables.iter().map(|t| t.rows_upserted).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_behind_a_private_authority_syncs_once_the_device_trusts_it() {
    let s = setup().await;
    // The authority alone, by name and by address; the authority beside
    // the bundled roots; the authority beside the system's (Linux here).
    for (db, host, tls) in [
        (
            "only.db",
            "localhost",
            trust(TlsRoots::ExtraOnly, Some(TEST_CA)),
        ),
        (
            "only-ip.db",
            "127.0.0.1",
            trust(TlsRoots::ExtraOnly, Some(TEST_CA)),
        ),
        (
            "bundled.db",
            "localhost",
            trust(TlsRoots::Bundled, Some(TEST_CA)),
        ),
        (
            "system.db",
            "localhost",
            trust(TlsRoots::System, Some(TEST_CA)),
        ),
    ] {
        let engine = s.engine(db, host, tls).expect("open");
        let report = engine.sync().await.unwrap_or_else(|e| panic!("{db}: {e}"));
        assert!(rows(&report) > 0, "{db}: {report:?}");
        assert!(report.bytes_down > 0, "{db}");
        assert!(
            !engine
                .list("work_orders", None, 10)
                .expect("list")
                .is_empty(),
            "{db}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_fails_the_sync_as_a_network_error_that_says_so_and_loses_nothing()
{
    let s = setup().await;
    // First a trusted sync, so there is a record to edit.
    let trusted = s
        .engine(
            "d.db",
            "localhost",
            trust(TlsRoots::ExtraOnly, Some(TEST_CA)),
        )
        .expect("open");
    trusted.sync().await.expect("trusted sync");
    let id = trusted.list("work_orders", None, 1).expect("list")[0]
        .id
        .clone();
    drop(trusted);

    // The same database, with Mozilla's roots only: the test authority is
    // not among them.
    let engine = s
        .engine("d.db", "localhost", trust(TlsRoots::Bundled, None))
        .expect("open");
    engine
        .update(
            "work_orders",
            &id,
            BTreeMap::from([("summary".to_owned(), Value::Text("fixed on site".into()))]),
        )
        .expect("edit");
    let err = engine.sync().await.expect_err("an untrusted certificate");
    assert_eq!(err.kind(), ErrorKind::NetworkUnavailable, "{err}");
    let message = err.to_string();
    assert!(message.contains("certificate"), "{message}");
    assert_eq!(engine.pending_uploads().expect("pending"), 1);
    drop(engine);

    // Trusted again: the edit goes up.
    let engine = s
        .engine(
            "d.db",
            "localhost",
            trust(TlsRoots::ExtraOnly, Some(TEST_CA)),
        )
        .expect("open");
    let report = engine.sync().await.expect("sync");
    assert_eq!(report.uploaded, 1);
    assert_eq!(engine.pending_uploads().expect("pending"), 0);
    let dispatcher = s.server.user("disp", "dispatcher").await;
    let (status, row) = s
        .server
        .call(
            "GET",
            &format!("/v1/records/work_orders/{id}"),
            Some(&dispatcher),
            None,
        )
        .await;
    assert_eq!(status, 200, "{row}");
    assert_eq!(row["row"]["summary"], "fixed on site", "{row}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_settings_that_cannot_work_are_refused_when_the_engine_opens() {
    let s = setup().await;
    let refused = |tls: TlsTrust| match s.engine("x.db", "localhost", tls) {
        Ok(_) => panic!("opened"),
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
            e.to_string()
        }
    };
    let m = refused(trust(TlsRoots::ExtraOnly, None));
    assert!(m.contains("extra_roots_pem"), "{m}");
    let m = refused(trust(TlsRoots::Bundled, Some("not a certificate")));
    assert!(m.contains("no PEM certificate"), "{m}");
    let broken = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    let m = refused(trust(TlsRoots::ExtraOnly, Some(broken)));
    assert!(m.contains("TLS extra roots"), "{m}");
}
