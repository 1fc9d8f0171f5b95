//! Time: the injected [`Clock`] and the few calendar conversions the engine
//! needs (UTC only; timestamps travel as `YYYY-MM-DDTHH:MM:SSZ` text and are
//! kept as milliseconds since the Unix epoch inside the engine).

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
