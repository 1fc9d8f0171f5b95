//! fieldsync protocol: what both ends of the wire share.
//!
//! The device engine (`fieldsync-core`) and the reference server
//! (`fieldsync-server`) both build on this crate: field values ([`value`]),
//! the filter language ([`filter`]), the offline profile ([`profile`]), the
//! data model ([`model`]), the wire types of pull, push and friends
//! ([`protocol`]), telemetry events ([`telemetry`]) and time ([`time`]:
//! clocks, zones, civil dates). It holds no storage and no networking; with
//! the `sqlite` feature it adds Value's rusqlite conversions and the WAL
//! helper ([`wal`]) both ends' SQLite databases use.

pub mod error;
pub mod filter;
pub mod ident;
pub mod kind;
pub mod model;
pub mod profile;
pub mod protocol;
pub mod telemetry;
pub mod time;
pub mod value;
#[cfg(feature = "sqlite")]
pub mod wal;

pub use error::{Error, Result};
pub use time::{Clock, ManualClock, SystemClock};
pub use value::{Record, Value};
