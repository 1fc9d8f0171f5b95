//! The pull cursor: what a device has seen of a table, and which phase of
//! its download it is in.

use fieldsync_protocol::profile::{SyncProfile, SyncTable};

/// Where a pull stands within one download (see [`Cursor`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The last page was answered; the next request starts a new download.
    Rest,
    /// Sending rows that entered a relative-date window between
    /// `evaluated_at` and `to` without changing, after change-log sequence
    /// `after`.
    Window { to: i64, after: i64 },
    /// Sending changes after `since`, page by page.
    Changes,
    /// Sending unchanged rows (`_seq <= since`) that qualify now and whose
    /// filter reads a related row changed after `since` (a work order
    /// whose priority rose lets its bookings in), after `_seq` `after`.
    Related { after: i64 },
}

/// The decoded form of a pull cursor: changes after `since`; rows that do not
/// qualify and were last changed at or before `snapshot` were never sent to
/// this device, so their removal need not be sent either. `evaluated_at` is
/// the server clock (ms) at which the device's copy of the table was
/// selected: rows that qualify now but did not then, although unchanged
/// (a booking whose date entered the window), are sent in the next
/// download's window phase.
///
/// Forms: `v2.<since>.<snapshot>.<evaluated_at>` (at rest),
/// `v2.<since>.<snapshot>.<evaluated_at>.c` (changes phase),
/// `v2.<since>.<snapshot>.<evaluated_at>.w.<to>.<after>` (window phase).
/// `v1.<since>.<snapshot>` cursors of older servers are still accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub since: i64,
    pub snapshot: i64,
    pub evaluated_at: Option<i64>,
    pub phase: Phase,
}

impl Cursor {
    /// Parses an opaque cursor; the empty string is the start.
    pub fn parse(s: &str) -> Option<Option<Cursor>> {
        if s.is_empty() {
            return Some(None);
        }
        // Only the spelling this server writes: digits, no sign, no leading
        // zero ("v1.+5.3", "v1.05.3" and "v1.-0.3" are refused).
        let num = |t: &str| -> Option<i64> {
            let canonical = !t.is_empty()
                && t.bytes().all(|b| b.is_ascii_digit())
                && (t == "0" || !t.starts_with('0'));
            if canonical { t.parse().ok() } else { None }
        };
        if let Some(rest) = s.strip_prefix("v1.") {
            let (a, b) = rest.split_once('.')?;
            return Some(Some(Cursor {
                since: num(a)?,
                snapshot: num(b)?,
                evaluated_at: None,
                phase: Phase::Changes,
            }));
        }
        let parts: Vec<&str> = s.strip_prefix("v2.")?.split('.').collect();
        let (since, snapshot, evaluated_at) = match parts.as_slice() {
            [a, b, e, ..] => (num(a)?, num(b)?, num(e)?),
            _ => return None,
        };
        let phase = match &parts[3..] {
            [] => Phase::Rest,
            ["c"] => Phase::Changes,
            ["w", to, after] => Phase::Window {
                to: num(to)?,
                after: num(after)?,
            },
            ["r", after] => Phase::Related { after: num(after)? },
            _ => return None,
        };
        Some(Some(Cursor {
            since,
            snapshot,
            evaluated_at: Some(evaluated_at),
            phase,
        }))
    }

    /// Whether rows can have entered `table`'s relative-date windows since
    /// this cursor's copy was selected: the table's own rules read the clock
    /// and the local day (at the profile's UTC offset) moved since
    /// `evaluated_at`. Relative dates move by whole days, so within one day
    /// nothing enters. A cursor without `evaluated_at` (v1) never opens a
    /// window; its next download records one.
    pub fn window_due(&self, profile: &SyncProfile, table: &SyncTable, now: i64) -> bool {
        match self.evaluated_at {
            Some(e) => {
                e < now
                    && table.uses_clock()
                    && profile.filter_context(e).today() != profile.filter_context(now).today()
            }
            None => false,
        }
    }

    /// The opaque form.
    pub fn encode(self) -> String {
        let base = format!(
            "v2.{}.{}.{}",
            self.since,
            self.snapshot,
            self.evaluated_at.unwrap_or(0)
        );
        match self.phase {
            Phase::Rest => base,
            Phase::Changes => format!("{base}.c"),
            Phase::Window { to, after } => format!("{base}.w.{to}.{after}"),
            Phase::Related { after } => format!("{base}.r.{after}"),
        }
    }
}
