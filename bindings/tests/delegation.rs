//! The exported API called from Rust the way the generated Kotlin and Swift
//! call it: a real engine on a real SQLite file, with the server unreachable
//! (a closed loopback port), so sync fails fast with typed errors and events.
//! The Kotlin tests (android/) cover the same API against a real server.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use fieldsync_ffi::{Engine, EngineConfig, FieldSyncError, SyncEvent, SyncEventListener, TlsRoots};

fn dead_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    drop(l);
    format!("http://127.0.0.1:{port}")
}

fn open(dir: &tempfile::TempDir) -> Arc<Engine> {
    Engine::open(EngineConfig {
        database_path: dir.path().join("d.db").display().to_string(),
        server_url: dead_url(),
        token: "t".into(),
        page_size: 100,
        tls_roots: None,
        tls_extra_roots_pem: None,
        app: None,
        encryption_key: None,
    })
    .expect("open")
}

#[derive(Default)]
struct Recorder(Mutex<Vec<SyncEvent>>);

impl SyncEventListener for Recorder {
    fn on_event(&self, event: SyncEvent) {
        self.0.lock().unwrap().push(event);
    }
}

impl Recorder {
    fn events(&self) -> Vec<SyncEvent> {
        self.0.lock().unwrap().clone()
    }

    fn wait_for_end(&self) {
        // Callbacks arrive on the library's threads; the end event is the last.
        for _ in 0..3000 {
            if self
                .events()
                .iter()
                .any(|e| matches!(e, SyncEvent::SyncFailed { .. }))
            {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("no SyncFailed event: {:?}", self.events());
    }
}

#[test]
fn sync_with_the_server_down_is_network_unavailable_and_emits_events() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(&dir);
    let recorder = Arc::new(Recorder::default());
    let handle = engine
        .add_event_listener(recorder.clone())
        .expect("subscribe");
    assert!(handle.is_active());

    let err = futures::executor::block_on(engine.sync_now()).unwrap_err();
    assert!(
        matches!(err, FieldSyncError::NetworkUnavailable { .. }),
        "{err:?}"
    );
    recorder.wait_for_end();
    let events = recorder.events();
    assert!(
        matches!(events[0], SyncEvent::Status { .. }),
        "the current status first: {events:?}"
    );
    assert_eq!(events[1], SyncEvent::SyncStarted);

    // After cancel, a second sync reaches a second listener only.
    handle.cancel();
    assert!(!handle.is_active());
    // Counted after cancel: events of the first sync may still have been
    // delivered between its end and the cancel.
    let seen = recorder.events().len();
    let control = Arc::new(Recorder::default());
    let _control_handle = engine
        .add_event_listener(control.clone())
        .expect("subscribe");
    let _ = futures::executor::block_on(engine.sync_now());
    control.wait_for_end();
    assert_eq!(recorder.events().len(), seen, "no callback after cancel");
}

#[test]
fn dropping_the_handle_ends_the_subscription() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(&dir);
    let recorder = Arc::new(Recorder::default());
    drop(
        engine
            .add_event_listener(recorder.clone())
            .expect("subscribe"),
    );
    let control = Arc::new(Recorder::default());
    let _keep = engine
        .add_event_listener(control.clone())
        .expect("subscribe");
    let _ = futures::executor::block_on(engine.sync_now());
    control.wait_for_end();
    // At most the status queued at registration, nothing of the sync.
    assert!(
        recorder
            .events()
            .iter()
            .all(|e| matches!(e, SyncEvent::Status { .. })),
        "{:?}",
        recorder.events()
    );
}

#[test]
fn reads_and_writes_before_the_first_sync_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(&dir);
    use futures::executor::block_on as block;
    assert!(matches!(
        block(engine.get("bookings".into(), "b1".into())),
        Err(FieldSyncError::InvalidInput { .. })
    ));
    assert!(matches!(
        block(engine.put("bookings".into(), "b1".into(), HashMap::new())),
        Err(FieldSyncError::InvalidInput { .. })
    ));
    assert!(matches!(
        block(engine.list("bookings".into(), None, -1)),
        Err(FieldSyncError::InvalidInput { .. })
    ));
    assert_eq!(block(engine.pending_uploads()).unwrap(), 0);
    let status = block(engine.status()).unwrap();
    assert_eq!(status.device_id, engine.device_id());
    assert!(status.profile_name.is_none());
    assert_eq!(block(engine.reset(false)).unwrap().discarded_changes, 0);
    assert!(engine.offline_profile().is_none());
}

#[test]
fn bad_configuration_is_invalid_input() {
    let dir = tempfile::tempdir().unwrap();
    for (token, page_size) in [("", 100), ("t", 0), ("t", -1), ("t", 20_000)] {
        let r = Engine::open(EngineConfig {
            database_path: dir.path().join("x.db").display().to_string(),
            server_url: "http://127.0.0.1:9".into(),
            token: token.into(),
            page_size,
            tls_roots: None,
            tls_extra_roots_pem: None,
            app: None,
            encryption_key: None,
        });
        assert!(
            matches!(r, Err(FieldSyncError::InvalidInput { .. })),
            "{token:?} {page_size}"
        );
    }
    // TLS settings that cannot work: only extra roots without any, and
    // extra roots that hold no certificate.
    for (roots, pem) in [
        (Some(TlsRoots::ExtraOnly), None),
        (
            Some(TlsRoots::Bundled),
            Some("not a certificate".to_owned()),
        ),
        (None, Some(String::new())),
    ] {
        let r = Engine::open(EngineConfig {
            database_path: dir.path().join("x.db").display().to_string(),
            server_url: "https://127.0.0.1:9".into(),
            token: "t".into(),
            page_size: 100,
            tls_roots: roots,
            tls_extra_roots_pem: pem.clone(),
            app: None,
            encryption_key: None,
        });
        assert!(
            matches!(r, Err(FieldSyncError::InvalidInput { .. })),
            "{roots:?} {pem:?}"
        );
    }
    // And settings that can: the bundled roots.
    Engine::open(EngineConfig {
        database_path: dir.path().join("y.db").display().to_string(),
        server_url: "https://127.0.0.1:9".into(),
        token: "t".into(),
        page_size: 100,
        tls_roots: Some(TlsRoots::Bundled),
        tls_extra_roots_pem: None,
        app: None,
        encryption_key: None,
    })
    .expect("bundled roots");
}
