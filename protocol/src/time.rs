//! Time: the injected [`Clock`], the few calendar conversions the engine
//! needs (timestamps travel as `YYYY-MM-DDTHH:MM:SSZ` text and are kept as
//! milliseconds since the Unix epoch inside the engine), and the [`Zone`]
//! whose calendar days relative-date filters count: an IANA time zone, its
//! rules (daylight saving included) from the database compiled into `jiff`,
//! so every device and the server read the same rules, or a fixed offset.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A source of the current time, injected so that scheduling and relative-date
/// filters can be tested with a controlled clock.
pub trait Clock: Send + Sync {
    /// Milliseconds since the Unix epoch, UTC.
    fn now_ms(&self) -> i64;
}

/// The wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    }
}

/// A clock that only moves when told to (for tests and simulations).
#[derive(Debug, Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    /// A clock standing at `ms` milliseconds since the epoch.
    pub fn new(ms: i64) -> Self {
        Self(AtomicI64::new(ms))
    }
    /// Moves the clock forward by `ms` milliseconds.
    pub fn advance(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
    /// Sets the clock.
    pub fn set(&self, ms: i64) {
        self.0.store(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

const DAY_MS: i64 = 86_400_000;

/// The time zone whose calendar days "today" and the other relative dates
/// count: an IANA zone (daylight saving included) or a fixed offset from
/// UTC. Two zones are equal when their names (or offsets) are.
#[derive(Debug, Clone)]
pub enum Zone {
    /// A fixed offset from UTC, in minutes (east positive).
    Fixed(i32),
    /// An IANA time zone by name (`Europe/Berlin`).
    Named(String, jiff::tz::TimeZone),
}

impl PartialEq for Zone {
    fn eq(&self, other: &Zone) -> bool {
        match (self, other) {
            (Zone::Fixed(a), Zone::Fixed(b)) => a == b,
            (Zone::Named(a, _), Zone::Named(b, _)) => a == b,
            _ => false,
        }
    }
}

impl Eq for Zone {}

impl Default for Zone {
    fn default() -> Zone {
        Zone::Fixed(0)
    }
}

impl Zone {
    /// UTC.
    pub fn utc() -> Zone {
        Zone::Fixed(0)
    }

    /// The IANA zone `name` from the compiled-in database; `None` when the
    /// database has no such zone.
    pub fn named(name: &str) -> Option<Zone> {
        // Only IANA names: jiff would also read POSIX TZ strings.
        if name.is_empty() || name.len() > 64 || !name.bytes().all(|b| b.is_ascii_graphic()) {
            return None;
        }
        jiff::tz::TimeZone::get(name)
            .ok()
            .map(|tz| Zone::Named(name.to_owned(), tz))
    }

    /// The zone's name, or `UTC+HH:MM` for a fixed offset.
    pub fn name(&self) -> String {
        match self {
            Zone::Named(n, _) => n.clone(),
            Zone::Fixed(m) => {
                let sign = if *m < 0 { '-' } else { '+' };
                format!("UTC{sign}{:02}:{:02}", m.abs() / 60, m.abs() % 60)
            }
        }
    }

    /// The zone's offset from UTC at instant `ms`, in milliseconds.
    pub fn offset_ms_at(&self, ms: i64) -> i64 {
        match self {
            Zone::Fixed(m) => i64::from(*m) * 60_000,
            Zone::Named(_, tz) => {
                let ts = jiff::Timestamp::from_millisecond(ms).unwrap_or(if ms < 0 {
                    jiff::Timestamp::MIN
                } else {
                    jiff::Timestamp::MAX
                });
                i64::from(tz.to_offset(ts).seconds()) * 1000
            }
        }
    }

    /// The local calendar day (days since 1970-01-01) of instant `ms`.
    pub fn local_day(&self, ms: i64) -> i64 {
        ms.saturating_add(self.offset_ms_at(ms)).div_euclid(DAY_MS)
    }

    /// The first instant (ms since the epoch, UTC) of local day `day`: its
    /// local midnight, or, when the clocks skip midnight that day (a
    /// daylight saving change at 00:00), the first local time that exists.
    /// A day is 23 or 25 hours long on a daylight saving change.
    pub fn day_start_ms(&self, day: i64) -> i64 {
        let naive = day.saturating_mul(DAY_MS);
        match self {
            Zone::Fixed(m) => naive - i64::from(*m) * 60_000,
            Zone::Named(_, tz) => {
                let (y, mo, d) = civil_from_days(day);
                let exact = i16::try_from(y)
                    .ok()
                    .and_then(|y| jiff::civil::Date::new(y, mo as i8, d as i8).ok())
                    .and_then(|date| tz.to_timestamp(date.at(0, 0, 0, 0)).ok())
                    .map(jiff::Timestamp::as_millisecond);
                // Outside jiff's years (-9999 to 9999): the offset there.
                exact.unwrap_or_else(|| naive - self.offset_ms_at(naive))
            }
        }
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

/// The date (year, month, day) of a day number since 1970-01-01. Total: any
/// `i64` gives a date (worked in `i128`, so the day numbers near `i64::MAX`
/// that `format_date` may be handed do not overflow).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = i128::from(z) + 719468;
    let era = if z >= 0 { z } else { z - 146096 } / 146097;
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = if m <= 2 { y + 1 } else { y };
    // |y| is about |z| / 365, so it fits in an i64.
    (y as i64, m, d)
}

/// Formats milliseconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn format_datetime(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Formats a day number as `YYYY-MM-DD`.
pub fn format_date(days: i64) -> String {
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}")
}

fn digits(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn parse_date_parts(s: &str) -> Option<(i64, u32, u32)> {
    if s.len() != 10 || s.as_bytes()[4] != b'-' || s.as_bytes()[7] != b'-' {
        return None;
    }
    let y = digits(&s[0..4])?;
    let m = digits(&s[5..7])?;
    let d = digits(&s[8..10])?;
    if !(1..=12).contains(&m) || d == 0 {
        return None;
    }
    let y = i64::from(y);
    let next = if m == 12 {
        days_from_civil(y + 1, 1, 1)
    } else {
        days_from_civil(y, m + 1, 1)
    };
    let month_len = next - days_from_civil(y, m, 1);
    if i64::from(d) > month_len {
        return None;
    }
    Some((y, m, d))
}

/// Parses `YYYY-MM-DD` into a day number.
pub fn parse_date(s: &str) -> Option<i64> {
    let (y, m, d) = parse_date_parts(s)?;
    Some(days_from_civil(y, m, d))
}

/// Parses `YYYY-MM-DDTHH:MM:SSZ` (optionally with `.fff` fractions) into milliseconds.
pub fn parse_datetime(s: &str) -> Option<i64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let days = parse_date(date)?;
    let (hms, frac) = match time.split_once('.') {
        Some((a, b)) => (a, Some(b)),
        None => (time, None),
    };
    // Exactly `HH:MM:SS`: two digits each (so `0:000:00`, also 8 bytes,
    // is refused). Bytes 2 and 5 being ASCII makes the slices char-aligned.
    let b = hms.as_bytes();
    if b.len() != 8 || b[2] != b':' || b[5] != b':' {
        return None;
    }
    let h = digits(&hms[0..2])?;
    let mi = digits(&hms[3..5])?;
    let se = digits(&hms[6..8])?;
    if h > 23 || mi > 59 || se > 59 {
        return None;
    }
    let ms = match frac {
        Some(f) if !f.is_empty() && f.len() <= 9 && f.bytes().all(|b| b.is_ascii_digit()) => {
            let padded = format!("{f:0<3}");
            i64::from(digits(&padded[..3])?)
        }
        Some(_) => return None,
        None => 0,
    };
    Some(days * 86_400_000 + i64::from(h * 3600 + mi * 60 + se) * 1000 + ms)
}

/// True when `s` is a valid `YYYY-MM-DD` date.
pub fn is_date(s: &str) -> bool {
    parse_date(s).is_some()
}

/// True when `s` is a valid UTC date-time.
pub fn is_datetime(s: &str) -> bool {
    parse_datetime(s).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `scripts/with-shifted-date.sh` runs the suites with the wall clock
    /// moved ahead and says by how much, with the real time it started at:
    /// this proves the shift reached the test programs (a run that was not
    /// shifted would test nothing it claims to).
    #[test]
    fn a_shifted_date_run_sees_the_shifted_date() {
        let (Ok(days), Ok(real)) = (
            std::env::var("FIELDSYNC_SHIFTED_DAYS"),
            std::env::var("FIELDSYNC_REAL_START_SECS"),
        ) else {
            return;
        };
        let days: i64 = days.parse().expect("FIELDSYNC_SHIFTED_DAYS");
        let real: i64 = real.parse().expect("FIELDSYNC_REAL_START_SECS");
        let seen = SystemClock.now_ms() / 1000;
        assert!(
            seen - real >= (days - 1) * 86_400,
            "the clock reads {seen}, not {days} days after {real}"
        );
    }

    #[test]
    fn civil_round_trip() {
        for z in [-800_000, -1, 0, 1, 59, 60, 365, 10_957, 20_000, 2_932_896] {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
        }
        assert_eq!(format_date(0), "1970-01-01");
        assert_eq!(parse_date("2024-02-29"), Some(days_from_civil(2024, 2, 29)));
        assert_eq!(parse_date("2023-02-29"), None);
        assert_eq!(parse_date("2023-13-01"), None);
        // Found by the datetime fuzz target: overflowed near i64::MAX.
        let (y, _, _) = civil_from_days(i64::MAX);
        assert!(y > 25_000_000_000_000_000);
        assert!(civil_from_days(i64::MIN).0 < -25_000_000_000_000_000);
    }

    fn at(s: &str) -> i64 {
        parse_datetime(s).expect("a date-time")
    }

    fn day(s: &str) -> i64 {
        parse_date(s).expect("a date")
    }

    #[test]
    fn days_of_a_zone_follow_daylight_saving() {
        let berlin = Zone::named("Europe/Berlin").expect("Berlin");
        // Spring: 2026-03-29 lasts 23 hours, [28T23:00Z, 29T22:00Z).
        assert_eq!(
            berlin.day_start_ms(day("2026-03-29")),
            at("2026-03-28T23:00:00Z")
        );
        assert_eq!(
            berlin.day_start_ms(day("2026-03-30")),
            at("2026-03-29T22:00:00Z")
        );
        assert_eq!(
            berlin.local_day(at("2026-03-29T21:59:59Z")),
            day("2026-03-29")
        );
        assert_eq!(
            berlin.local_day(at("2026-03-29T22:00:00Z")),
            day("2026-03-30")
        );
        assert_eq!(berlin.offset_ms_at(at("2026-03-29T00:59:59Z")), 3_600_000);
        assert_eq!(berlin.offset_ms_at(at("2026-03-29T01:00:00Z")), 7_200_000);
        // Autumn in New York: 2026-11-01 lasts 25 hours.
        let ny = Zone::named("America/New_York").expect("New York");
        let len = ny.day_start_ms(day("2026-11-02")) - ny.day_start_ms(day("2026-11-01"));
        assert_eq!(len, 25 * 3_600_000);
        assert_eq!(ny.local_day(at("2026-11-02T04:59:59Z")), day("2026-11-01"));
        // Havana skips midnight in spring (00:00 becomes 01:00): the day
        // starts at the first local time that exists.
        let havana = Zone::named("America/Havana").expect("Havana");
        let start = havana.day_start_ms(day("2026-03-08"));
        assert_eq!(start, at("2026-03-08T05:00:00Z"));
        assert_eq!(havana.local_day(start), day("2026-03-08"));
        assert_eq!(havana.local_day(start - 1), day("2026-03-07"));
        // A fixed offset never moves.
        let fixed = Zone::Fixed(60);
        assert_eq!(
            fixed.day_start_ms(day("2026-03-30")),
            at("2026-03-29T23:00:00Z")
        );
        assert_eq!(fixed.name(), "UTC+01:00");
        assert_eq!(Zone::Fixed(-330).name(), "UTC-05:30");
    }

    #[test]
    fn zones_are_iana_names_only() {
        assert!(Zone::named("Europe/Berlin").is_some());
        assert!(Zone::named("UTC").is_some());
        for bad in [
            "",
            "Mars/Olympus",
            "CET-1CEST,M3.5.0,M10.5.0/3",
            "Europe/Berlin ",
        ] {
            assert!(Zone::named(bad).is_none(), "{bad:?}");
        }
        // Far instants and days stay total.
        let z = Zone::named("Europe/Berlin").expect("Berlin");
        let _ = z.local_day(i64::MAX);
        let _ = z.local_day(i64::MIN);
        let _ = z.day_start_ms(i64::MAX / DAY_MS);
        let _ = z.day_start_ms(i64::MIN / DAY_MS);
    }

    #[test]
    fn datetime_round_trip() {
        let ms = 1_764_374_400_000; // 2025-11-29T00:00:00Z
        assert_eq!(format_datetime(ms), "2025-11-29T00:00:00Z");
        assert_eq!(parse_datetime("2025-11-29T00:00:00Z"), Some(ms));
        assert_eq!(parse_datetime("2025-11-29T00:00:00.250Z"), Some(ms + 250));
        assert_eq!(parse_datetime("2025-11-29 00:00:00"), None);
        assert_eq!(parse_datetime("2025-11-29T24:00:00Z"), None);
        // Found by the datetime fuzz target: 8 bytes, but not HH:MM:SS.
        assert_eq!(parse_datetime("2025-11-29T0:000:00Z"), None);
        assert_eq!(parse_datetime("2025-11-29T00:0:000Z"), None);
    }
}
