//! Relative dates in real time zones: a profile's IANA zone, a user's zone
//! overriding it, and days around a daylight saving change, as a device
//! syncs them. The server runs in-process on 127.0.0.1 with an injected
//! `ManualClock`; the device is the core `Engine` with the same clock, over
//! real HTTP and a real SQLite file. Every instant is fixed: no test reads
//! today's date.

mod inproc;
mod testdb;

use std::collections::BTreeSet;

use fieldsync_core::time::parse_datetime;
use serde_json::json;

use inproc::{ADMIN, Env, held, set};

impl Env {
    /// A profile whose users keep their own bookings of today (by
    /// `start_time`, a date-time) in `zone`.
    async fn today_profile(&self, zone: &str) {
        let filter = json!({"op": "and", "filters": [
            {"op": "eq_current_user", "column": "resource_id"},
            {"op": "today", "column": "start_time"}
        ]});
        self.admin(
            "PUT",
            "/v1/admin/profiles/today",
            Some(json!({
                "name": "today",
                "time_zone": zone,
                "tables": [{
                    "name": "bookings",
                    "columns": ["resource_id", "start_time", "end_time", "status"],
                    "rules": [{"kind": "custom", "filter": filter}],
                    "sync_interval_secs": 300
                }]
            })),
        )
        .await;
    }

    async fn booking(&self, disp: &str, id: &str, tech: &str, start: &str, end: &str) {
        let (s, v) = self
            .call(
                "PUT",
                &format!("/v1/records/bookings/{id}"),
                disp,
                Some(json!({"data": {"resource_id": tech, "status": "active",
                                     "start_time": start, "end_time": end}})),
            )
            .await;
        assert!(s == 200 || s == 201, "{s}: {v}");
    }
}

/// Bookings around Europe's spring change (2026-03-29, 01:00 UTC: 02:00 CET
/// becomes 03:00 CEST, a 23-hour day) and a technician in Berlin: "today"
/// is the local day before, on and after the change, whose bounds move from
/// +01:00 to +02:00. A fixed offset of +01:00 would keep `late-29` (00:30
/// local on the 30th, 22:30Z) on the 29th.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn today_follows_berlin_across_the_spring_change() {
    let env = Env::start_at("2026-03-28T12:00:00Z").await;
    env.today_profile("Europe/Berlin").await;
    let disp = env.user_in_zone("disp", "dispatcher", None, None).await;
    let tech = env
        .user_in_zone("tech-a", "technician", Some("today"), None)
        .await;
    for (id, start) in [
        // 28 March, CET: [27T23:00Z, 28T23:00Z).
        ("first-28", "2026-03-27T23:00:00Z"), // 00:00 local on the 28th
        ("late-28", "2026-03-28T22:59:59Z"),  // 23:59:59 local
        // 29 March, the change: [28T23:00Z, 29T22:00Z), 23 hours.
        ("first-29", "2026-03-28T23:00:00Z"),
        ("at-change", "2026-03-29T01:00:00Z"), // 03:00 CEST
        ("late-29", "2026-03-29T21:59:59Z"),   // 23:59:59 CEST
        // 30 March, CEST: [29T22:00Z, 30T22:00Z).
        ("first-30", "2026-03-29T22:00:00Z"),
        ("after-30", "2026-03-29T22:30:00Z"), // 00:30 CEST; 23:30 at +01:00
    ] {
        env.booking(&disp, id, "tech-a", start, start).await;
    }
    let device = env.device("berlin", &tech);
    // Before: noon on the 28th.
    device.sync().await.expect("sync");
    assert_eq!(held(&device, "bookings"), set(&["first-28", "late-28"]));
    // During: 02:30 UTC on the 29th (04:30 CEST).
    env.clock
        .set(parse_datetime("2026-03-29T02:30:00Z").expect("time"));
    device.sync().await.expect("sync");
    assert_eq!(
        held(&device, "bookings"),
        set(&["first-29", "at-change", "late-29"])
    );
    // The last minute of the short day: still the 29th.
    env.clock
        .set(parse_datetime("2026-03-29T21:59:00Z").expect("time"));
    device.sync().await.expect("sync");
    assert_eq!(
        held(&device, "bookings"),
        set(&["first-29", "at-change", "late-29"])
    );
    // After: 22:00 UTC is midnight in Berlin, the 30th.
    env.clock
        .set(parse_datetime("2026-03-29T22:00:00Z").expect("time"));
    device.sync().await.expect("sync");
    assert_eq!(held(&device, "bookings"), set(&["first-30", "after-30"]));
}

/// The same profile in New York around the autumn change (2026-11-01,
/// 06:00 UTC: 02:00 EDT becomes 01:00 EST, a 25-hour day), and a user in
/// Berlin on it: the user's zone overrides the profile's, so the two
/// technicians see different days at the same instant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_york_autumn_change_and_a_user_in_another_zone() {
    let env = Env::start_at("2026-10-31T16:00:00Z").await;
    env.today_profile("America/New_York").await;
    let disp = env.user_in_zone("disp", "dispatcher", None, None).await;
    let ny = env
        .user_in_zone("tech-ny", "technician", Some("today"), None)
        .await;
    let berlin = env
        .user_in_zone(
            "tech-be",
            "technician",
            Some("today"),
            Some("Europe/Berlin"),
        )
        .await;
    for tech in ["tech-ny", "tech-be"] {
        for (id, start) in [
            // 31 October, EDT: [31T04:00Z, 1T04:00Z).
            ("oct31", "2026-10-31T14:00:00Z"),
            // 1 November, the change: [1T04:00Z, 2T05:00Z), 25 hours.
            ("nov1-first", "2026-11-01T04:00:00Z"), // 00:00 EDT
            ("nov1-repeat", "2026-11-01T06:30:00Z"), // 01:30 EST, the second time
            ("nov1-late", "2026-11-02T04:59:59Z"),  // 23:59:59 EST
            // 2 November, EST: [2T05:00Z, 3T05:00Z).
            ("nov2", "2026-11-02T05:00:00Z"),
        ] {
            let id = format!("{tech}-{id}");
            env.booking(&disp, &id, tech, start, start).await;
        }
    }
    let ny_device = env.device("ny", &ny);
    let be_device = env.device("be", &berlin);
    let ids = |tech: &str, names: &[&str]| -> BTreeSet<String> {
        names.iter().map(|n| format!("{tech}-{n}")).collect()
    };
    // Before: noon on the 31st in New York (16:00Z), 17:00 in Berlin (CET
    // since 25 October): both on the 31st.
    ny_device.sync().await.expect("sync");
    be_device.sync().await.expect("sync");
    assert_eq!(held(&ny_device, "bookings"), ids("tech-ny", &["oct31"]));
    assert_eq!(held(&be_device, "bookings"), ids("tech-be", &["oct31"]));
    // During the repeated hour (06:30Z, 01:30 EST): New York's 1 November;
    // Berlin's too (07:30 CET), whose 1 November is [10-31T23:00Z,
    // 11-01T23:00Z): only its `nov1-first` and `nov1-repeat` fall in it.
    env.clock
        .set(parse_datetime("2026-11-01T06:30:00Z").expect("time"));
    ny_device.sync().await.expect("sync");
    be_device.sync().await.expect("sync");
    assert_eq!(
        held(&ny_device, "bookings"),
        ids("tech-ny", &["nov1-first", "nov1-repeat", "nov1-late"])
    );
    assert_eq!(
        held(&be_device, "bookings"),
        ids("tech-be", &["nov1-first", "nov1-repeat"])
    );
    // The 25th hour of New York's day (04:30Z on the 2nd): still the 1st
    // there, already the 2nd in Berlin.
    env.clock
        .set(parse_datetime("2026-11-02T04:30:00Z").expect("time"));
    ny_device.sync().await.expect("sync");
    be_device.sync().await.expect("sync");
    assert_eq!(
        held(&ny_device, "bookings"),
        ids("tech-ny", &["nov1-first", "nov1-repeat", "nov1-late"])
    );
    assert_eq!(
        held(&be_device, "bookings"),
        ids("tech-be", &["nov1-late", "nov2"])
    );
    // After: 05:00Z is midnight of the 2nd in New York.
    env.clock
        .set(parse_datetime("2026-11-02T05:00:00Z").expect("time"));
    ny_device.sync().await.expect("sync");
    assert_eq!(held(&ny_device, "bookings"), ids("tech-ny", &["nov2"]));
    // The device's profile names the user's zone, not the profile's.
    assert_eq!(
        be_device.profile().and_then(|p| p.time_zone).as_deref(),
        Some("Europe/Berlin")
    );
}

/// Unknown zones are refused with a typed error, in a profile and for a
/// user, and nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_zones_are_refused() {
    let env = Env::start_at("2026-03-28T12:00:00Z").await;
    let bad_profile = json!({"name": "bad", "time_zone": "Mars/Olympus",
        "tables": [{"name": "bookings", "columns": ["resource_id"], "rules": [{"kind": "all"}],
                    "sync_interval_secs": 300}]});
    let (s, v) = env
        .call("PUT", "/v1/admin/profiles/bad", ADMIN, Some(bad_profile))
        .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"]["code"], "invalid_profile", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .expect("message")
            .contains("Mars/Olympus")
    );
    let both = json!({"name": "both", "time_zone": "Europe/Berlin", "utc_offset_minutes": 60,
        "tables": [{"name": "bookings", "columns": ["resource_id"], "rules": [{"kind": "all"}],
                    "sync_interval_secs": 300}]});
    let (s, v) = env
        .call("PUT", "/v1/admin/profiles/both", ADMIN, Some(both))
        .await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = env
        .call(
            "POST",
            "/v1/admin/users",
            ADMIN,
            Some(json!({"id": "x", "name": "x", "role": "technician", "time_zone": "CET-1CEST,M3.5.0,M10.5.0/3"})),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"]["code"], "bad_request", "{v}");
    let (s, _) = env.call("GET", "/v1/admin/profiles/bad", ADMIN, None).await;
    assert_eq!(s, 404);
    let users = env.admin("GET", "/v1/admin/users", None).await;
    assert!(!users.to_string().contains("\"x\""), "{users}");
}
