//! A seeded generator of realistic field-service data (accounts, customer
//! assets, work orders with their incidents, products, services and service
//! tasks, and bookings assigned to technicians). The same seed gives the same
//! data, so the demo, tests and benchmarks can rely on it.

use std::collections::BTreeMap;

use fieldsync_protocol::Value;
use fieldsync_protocol::time::format_datetime;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;

/// What to generate.
#[derive(Debug, Clone, Deserialize)]
pub struct SeedSpec {
    /// User ids of the technicians bookings are assigned to.
    pub technicians: Vec<String>,
    /// Number of work orders (each has one booking and a few child rows).
    pub work_orders: usize,
    #[serde(default)]
    pub seed: u64,
    /// "Now" in milliseconds since the epoch; booking dates spread around
    /// it. The server's clock when absent.
    #[serde(default)]
    pub now_ms: Option<i64>,
}

/// Generated rows: table name, then (id, fields) pairs.
pub type Rows = Vec<(String, Vec<(String, BTreeMap<String, Value>)>)>;

const CITIES: [&str; 8] = [
    "Lyon", "Leeds", "Porto", "Graz", "Ghent", "Turku", "Malmo", "Cork",
];
const INCIDENTS: [&str; 6] = [
    "Unit not cooling",
    "Annual maintenance",
    "Error code E42",
    "Noisy compressor",
    "Leak at valve",
    "Sensor calibration",
];
const PRODUCTS: [&str; 5] = [
    "Filter F-200",
    "Valve kit",
    "Sensor S1",
    "Gasket set",
    "Fan motor",
];
const SERVICES: [&str; 4] = ["Inspection", "Repair", "Calibration", "Cleaning"];
const TASKS: [&str; 5] = [
    "Check pressure",
    "Replace filter",
    "Test run",
    "Photograph site",
    "Customer sign-off",
];

fn text(s: impl Into<String>) -> Value {
    Value::Text(s.into())
}

/// Booking statuses every data set has.
pub const BOOKING_STATUSES: [(&str, &str, &str); 5] = [
    ("bs-scheduled", "Scheduled", "active"),
    ("bs-traveling", "Traveling", "active"),
    ("bs-in-progress", "In Progress", "active"),
    ("bs-completed", "Completed", "completed"),
    ("bs-canceled", "Canceled", "canceled"),
];

/// Generates a data set around `spec.now_ms`, or `now_ms` when the spec
/// names no instant.
pub fn generate(spec: &SeedSpec, now_ms: i64) -> Rows {
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let now = spec.now_ms.unwrap_or(now_ms);
    let day = 86_400_000i64;
    let today = now - now.rem_euclid(day);
    let n = spec.work_orders;
    let accounts_n = (n / 10).max(1);
    let mut out: Rows = Vec::new();

    out.push((
        "booking_statuses".into(),
        BOOKING_STATUSES
            .iter()
            .map(|(id, name, status)| {
                (
                    (*id).to_owned(),
                    BTreeMap::from([
                        ("name".into(), text(*name)),
                        ("status".into(), text(*status)),
                    ]),
                )
            })
            .collect(),
    ));

    let mut accounts = Vec::with_capacity(accounts_n);
    let mut assets = Vec::with_capacity(accounts_n * 2);
    for a in 0..accounts_n {
        let id = format!("acc-{a:06}");
        let city = CITIES[rng.random_range(0..CITIES.len())];
        accounts.push((
            id.clone(),
            BTreeMap::from([
                ("name".into(), text(format!("Customer {a}"))),
                (
                    "address".into(),
                    text(format!("{} Market Street", rng.random_range(1..400))),
                ),
                ("city".into(), text(city)),
                (
                    "phone".into(),
                    text(format!(
                        "+44 20 {:04} {:04}",
                        rng.random_range(0..10_000),
                        rng.random_range(0..10_000)
                    )),
                ),
                (
                    "modified_on".into(),
                    text(format_datetime(today - day * rng.random_range(1..400))),
                ),
            ]),
        ));
        for k in 0..2 {
            assets.push((
                format!("asset-{a:06}-{k}"),
                BTreeMap::from([
                    (
                        "name".into(),
                        text(format!("Chiller {}", rng.random_range(100..999))),
                    ),
                    ("account_id".into(), text(id.clone())),
                    (
                        "serial_number".into(),
                        text(format!("SN{:08}", rng.random_range(0..100_000_000))),
                    ),
                    (
                        "installed_on".into(),
                        text(fieldsync_protocol::time::format_date(
                            today / day - rng.random_range(30..3000),
                        )),
                    ),
                ]),
            ));
        }
    }

    let mut work_orders = Vec::with_capacity(n);
    let mut bookings = Vec::with_capacity(n);
    let mut incidents = Vec::with_capacity(n);
    let mut products = Vec::new();
    let mut services = Vec::new();
    let mut tasks = Vec::new();
    for w in 0..n {
        let id = format!("wo-{w:07}");
        let a = rng.random_range(0..accounts_n);
        let asset = format!("asset-{a:06}-{}", rng.random_range(0..2));
        let created = today - day * rng.random_range(1..60);
        let tech = if spec.technicians.is_empty() {
            None
        } else {
            Some(spec.technicians[w % spec.technicians.len()].clone())
        };
        work_orders.push((
            id.clone(),
            BTreeMap::from([
                ("name".into(), text(format!("WO-{:07}", w + 1))),
                ("account_id".into(), text(format!("acc-{a:06}"))),
                ("customer_asset_id".into(), text(asset.clone())),
                ("status".into(), text("scheduled")),
                ("priority".into(), Value::Integer(rng.random_range(1..4))),
                (
                    "summary".into(),
                    text(INCIDENTS[rng.random_range(0..INCIDENTS.len())]),
                ),
                (
                    "instructions".into(),
                    text("Call the site contact 30 minutes before arrival."),
                ),
                (
                    "owner_id".into(),
                    tech.clone().map(Value::Text).unwrap_or(Value::Null),
                ),
                ("created_on".into(), text(format_datetime(created))),
                ("modified_on".into(), text(format_datetime(created))),
            ]),
        ));
        // Bookings spread from 10 days ago to 20 days ahead, mostly near today.
        // The first ten work orders of each technician are booked in the
        // next few days (active, inside the default profile's window), so
        // every technician has work on the device.
        let offset_days: i64 = if w < 10 * spec.technicians.len().max(1) {
            rng.random_range(0..5)
        } else {
            rng.random_range(-10..20)
        };
        let start = today + offset_days * day + rng.random_range(7..17) * 3_600_000;
        let (status_id, status) = if offset_days < -2 {
            ("bs-completed", "completed")
        } else {
            ("bs-scheduled", "active")
        };
        bookings.push((
            format!("bk-{w:07}"),
            BTreeMap::from([
                ("name".into(), text(format!("Booking {}", w + 1))),
                ("work_order_id".into(), text(id.clone())),
                (
                    "resource_id".into(),
                    tech.map(Value::Text).unwrap_or(Value::Null),
                ),
                ("booking_status_id".into(), text(status_id)),
                ("status".into(), text(status)),
                ("start_time".into(), text(format_datetime(start))),
                (
                    "end_time".into(),
                    text(format_datetime(start + rng.random_range(1..4) * 3_600_000)),
                ),
                (
                    "travel_minutes".into(),
                    Value::Integer(rng.random_range(5..90)),
                ),
                ("notes".into(), Value::Null),
            ]),
        ));
        incidents.push((
            format!("inc-{w:07}"),
            BTreeMap::from([
                ("work_order_id".into(), text(id.clone())),
                ("customer_asset_id".into(), text(asset)),
                (
                    "incident_type".into(),
                    text(INCIDENTS[rng.random_range(0..INCIDENTS.len())]),
                ),
                (
                    "description".into(),
                    text("Reported by the customer by phone."),
                ),
                (
                    "estimated_minutes".into(),
                    Value::Integer(rng.random_range(15..240)),
                ),
            ]),
        ));
        for k in 0..rng.random_range(0..3) {
            products.push((
                format!("wop-{w:07}-{k}"),
                BTreeMap::from([
                    ("work_order_id".into(), text(id.clone())),
                    (
                        "product_name".into(),
                        text(PRODUCTS[rng.random_range(0..PRODUCTS.len())]),
                    ),
                    (
                        "quantity".into(),
                        Value::Real(f64::from(rng.random_range(1..5))),
                    ),
                    (
                        "unit_price".into(),
                        Value::Real(f64::from(rng.random_range(500..20_000)) / 100.0),
                    ),
                    ("line_status".into(), text("estimated")),
                ]),
            ));
        }
        for k in 0..rng.random_range(0..3) {
            services.push((
                format!("wos-{w:07}-{k}"),
                BTreeMap::from([
                    ("work_order_id".into(), text(id.clone())),
                    (
                        "service_name".into(),
                        text(SERVICES[rng.random_range(0..SERVICES.len())]),
                    ),
                    (
                        "duration_minutes".into(),
                        Value::Integer(rng.random_range(15..180)),
                    ),
                    ("line_status".into(), text("estimated")),
                ]),
            ));
        }
        for k in 0..rng.random_range(1..4) {
            tasks.push((
                format!("wot-{w:07}-{k}"),
                BTreeMap::from([
                    ("work_order_id".into(), text(id.clone())),
                    (
                        "task_name".into(),
                        text(TASKS[rng.random_range(0..TASKS.len())]),
                    ),
                    ("sequence".into(), Value::Integer(k + 1)),
                    ("completed".into(), Value::Boolean(false)),
                    ("percent_complete".into(), Value::Real(0.0)),
                ]),
            ));
        }
    }
    out.push(("accounts".into(), accounts));
    out.push(("customer_assets".into(), assets));
    out.push(("work_orders".into(), work_orders));
    out.push(("bookings".into(), bookings));
    out.push(("work_order_incidents".into(), incidents));
    out.push(("work_order_products".into(), products));
    out.push(("work_order_services".into(), services));
    out.push(("work_order_service_tasks".into(), tasks));
    out
}
