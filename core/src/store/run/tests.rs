use super::*;
use crate::store::Store;

fn run(pid: u32) -> SharedRun {
    SharedRun {
        sync_id: "s1".into(),
        pid,
        mode: SyncMode::First,
        started_at: 1,
        updated_at: 2,
        table: Some("bookings".into()),
        rows_done: 10,
        rows_total: Some(40),
        bytes_down: 1000,
        fraction: Some(0.25),
    }
}

#[test]
fn a_running_sync_is_read_back_and_a_dead_process_is_not_running() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("d.db")).expect("open");
    assert_eq!(store.shared_run().expect("read"), None);
    let mine = run(std::process::id());
    store.publish_run(&mine).expect("publish");
    assert_eq!(store.shared_run().expect("read"), Some(mine.clone()));
    let mut later = mine.clone();
    later.rows_done = 20;
    assert!(store.publish_run_progress(&later).expect("progress"));
    assert_eq!(store.shared_run().expect("read"), Some(later));
    store.clear_run("another sync").expect("clear");
    assert!(store.shared_run().expect("read").is_some());
    store.clear_run("s1").expect("clear");
    assert_eq!(store.shared_run().expect("read"), None);

    // A process that has exited (reaped) left its row behind.
    let mut child = std::process::Command::new("true").spawn().expect("spawn");
    let gone = child.id();
    child.wait().expect("wait");
    store.publish_run(&run(gone)).expect("publish");
    assert_eq!(store.shared_run().expect("read"), None);
}

#[test]
fn a_row_whose_process_id_was_reused_is_not_a_running_sync() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("d.db")).expect("open");
    // A sync that crashed left its row; its process id now belongs to
    // a live, unrelated process (here: this one), which holds no lock.
    store
        .with_writer(|c| write(c, &run(std::process::id())))
        .expect("row");
    assert!(process_alive(std::process::id()));
    assert_eq!(store.shared_run().expect("read"), None);
    // The same row written by a running sync is one.
    store
        .publish_run(&run(std::process::id()))
        .expect("publish");
    assert!(store.shared_run().expect("read").is_some());
    store.clear_run("s1").expect("clear");
    assert_eq!(store.shared_run().expect("read"), None);
}
