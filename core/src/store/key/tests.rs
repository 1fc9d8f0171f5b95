use super::*;

#[test]
fn debug_never_shows_the_key() {
    let key = DatabaseKey::from_bytes([0xab; 32]);
    let shown = format!("{key:?}");
    assert_eq!(shown, "DatabaseKey(<redacted>)");
    assert!(!shown.to_lowercase().contains("abab"));
}

#[test]
fn hex_keys_are_64_digits() {
    let key = DatabaseKey::from_hex(&"0F".repeat(32)).expect("key");
    assert_eq!(key.0, [0x0f; 32]);
    assert!(DatabaseKey::from_hex(&"0f".repeat(31)).is_err());
    assert!(DatabaseKey::from_hex(&"0g".repeat(32)).is_err());
    assert!(DatabaseKey::from_slice(&[1; 31]).is_err());
    assert_eq!(key.literal().as_str(), format!("x'{}'", "0f".repeat(32)));
}

/// SQLCipher leaves temporary files in clear: an encrypted store keeps
/// its temporary data in memory, a plain one in files (1 FILE, 2 MEMORY).
#[test]
fn an_encrypted_store_keeps_temporary_data_in_memory() {
    let dir = tempfile::tempdir().expect("dir");
    for (name, key, want) in [
        ("plain.db", None, 1),
        ("encrypted.db", Some(DatabaseKey::from_bytes([3; 32])), 2),
    ] {
        let store =
            crate::store::Store::open_with_key(&dir.path().join(name), key.as_ref()).expect("open");
        for got in [
            store.with_writer(|c| {
                Ok(c.pragma_query_value(None, "temp_store", |r| r.get::<_, i64>(0))?)
            }),
            store.with_reader(|c| {
                Ok(c.pragma_query_value(None, "temp_store", |r| r.get::<_, i64>(0))?)
            }),
        ] {
            assert_eq!(got.expect("temp_store"), want, "{name}");
        }
    }
}
