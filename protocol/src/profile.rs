//! The offline profile: which tables, columns and rows a device keeps, and how
//! often each table syncs.
//!
//! Two forms exist. [`OfflineProfile`] is what an administrator writes and the
//! server stores (table names, column names, row rules, sync intervals).
//! [`SyncProfile`] is what the server sends a device: the same profile resolved
//! against the server's data model (column kinds, primary key) and the user it
//! was issued to, so the device can create its tables and evaluate row rules
//! locally.
//!
//! Row rules are a tagged list (`{"kind": "all"}`, `{"kind": "owned", ...}`,
//! `{"kind": "related", ...}`, `{"kind": "custom", "filter": {...}}`); a row
//! qualifies when any rule of its table matches (OR). New rule kinds are new
//! tags, so the format grows without a break. Custom filters are defined in
//! [`crate::filter`].

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::filter::{Filter, FilterContext, FilterTable};
pub use crate::ident::{check_identifier, quote_ident};
pub use crate::kind::ColumnKind;
pub use crate::model::{Column, DataModel, MAX_COLUMNS_PER_TABLE, ModelIndex, TableSchema};
use crate::protocol::Op;
use crate::time::Zone;
use crate::value::Value;

/// Shortest allowed sync interval (5 minutes).
pub const MIN_SYNC_INTERVAL_SECS: u32 = 300;
/// Longest allowed sync interval (1 day).
pub const MAX_SYNC_INTERVAL_SECS: u32 = 86_400;
/// Most tables one table may be related to, counted transitively.
pub const MAX_RELATED_TABLES: usize = 15;
/// Largest UTC offset of a profile's time zone, in minutes (±14 hours).
pub const MAX_UTC_OFFSET_MINUTES: i32 = 14 * 60;

/// Which rows of a table a device keeps. A row qualifies when any rule of its
/// table matches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum RowRule {
    /// Every row of the table.
    All,
    /// Rows whose `column` holds the id of the user the profile was issued to.
    Owned { column: String },
    /// Rows related to rows of another table of the profile: this table's
    /// `column` equals `foreign_column` of a row of `table` that the profile
    /// selects. Work orders reached through bookings:
    /// `{"kind": "related", "table": "bookings", "column": "id", "foreign_column": "work_order_id"}`;
    /// incidents of those work orders:
    /// `{"kind": "related", "table": "work_orders", "column": "work_order_id", "foreign_column": "id"}`.
    Related {
        table: String,
        column: String,
        foreign_column: String,
    },
    /// Rows the custom filter selects (see [`crate::filter`]), for example
    /// `{"kind": "custom", "filter": {"op": "eq", "column": "status", "value": "active"}}`.
    Custom { filter: Filter },
}

/// A table in an administrator's offline profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableProfile {
    /// Table name in the server's data model.
    pub name: String,
    /// Columns to sync; the primary key is always included.
    pub columns: Vec<String>,
    /// Row rules; a row qualifies when any matches. Must not be empty.
    pub rules: Vec<RowRule>,
    /// How often the table syncs, in seconds (300 to 86400).
    pub sync_interval_secs: u32,
    /// What the profile's users may write in the table; absent: create,
    /// change and delete, any synced column.
    #[serde(default, skip_serializing_if = "WriteRights::is_everything")]
    pub writes: WriteRights,
    /// Indexes the device creates on its copy of the table, for the app's
    /// local queries (at most [`MAX_LOCAL_INDEXES`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub indexes: Vec<LocalIndex>,
}

/// Most local indexes one table may declare.
pub const MAX_LOCAL_INDEXES: usize = 16;
/// Most columns of one local index.
pub const MAX_LOCAL_INDEX_COLUMNS: usize = 8;

/// An index the device keeps on its copy of a table, so local queries whose
/// condition or order reads these columns use it instead of a scan. Columns
/// are synced columns of the table, in index order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalIndex {
    pub columns: Vec<String>,
}

impl LocalIndex {
    /// Checks the index against the table's synced columns.
    pub fn validate(&self, table: &SyncTable) -> Result<(), Error> {
        if self.columns.is_empty() || self.columns.len() > MAX_LOCAL_INDEX_COLUMNS {
            return Err(Error::InvalidProfile(format!(
                "table '{}': a local index has 1 to {MAX_LOCAL_INDEX_COLUMNS} columns",
                table.name
            )));
        }
        let mut seen = BTreeSet::new();
        for c in &self.columns {
            if table.column(c).is_none() {
                return Err(Error::InvalidProfile(format!(
                    "table '{}': a local index names column '{c}', which the table does not sync",
                    table.name
                )));
            }
            if !seen.insert(c) {
                return Err(Error::InvalidProfile(format!(
                    "table '{}': a local index names column '{c}' twice",
                    table.name
                )));
            }
        }
        Ok(())
    }
}

/// What the users of a profile (a role) may write in one table, enforced
/// by the device before a write is queued and by the server on every push.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriteRights {
    /// May create rows.
    #[serde(default = "allowed")]
    pub create: bool,
    /// May change rows.
    #[serde(default = "allowed")]
    pub update: bool,
    /// May delete rows.
    #[serde(default = "allowed")]
    pub delete: bool,
    /// The columns a create or a change may set; absent: every synced
    /// column. The primary key is always allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub columns: Option<Vec<String>>,
}

fn allowed() -> bool {
    true
}

impl Default for WriteRights {
    fn default() -> Self {
        Self {
            create: true,
            update: true,
            delete: true,
            columns: None,
        }
    }
}

impl WriteRights {
    /// Whether these rights allow every write.
    pub fn is_everything(&self) -> bool {
        *self == WriteRights::default()
    }

    /// Why `op` setting `fields` of a row of `table` is not allowed, if it
    /// is not.
    pub fn refusal<'a>(
        &self,
        table: &SyncTable,
        op: Op,
        fields: impl IntoIterator<Item = &'a String>,
    ) -> Option<String> {
        let (may, verb) = match op {
            Op::Insert => (self.create, "create"),
            Op::Update => (self.update, "change"),
            Op::Delete => (self.delete, "delete"),
        };
        if !may {
            return Some(format!("you may not {verb} rows of {}", table.name));
        }
        if op == Op::Delete {
            return None;
        }
        let columns = self.columns.as_ref()?;
        fields
            .into_iter()
            .find(|f| **f != table.primary_key && !columns.contains(f))
            .map(|f| format!("you may not set column '{f}' of {}", table.name))
    }
}

/// An offline profile as an administrator writes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OfflineProfile {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Fixed offset of the profile's time zone from UTC in minutes, used for
    /// "today" in relative-date filters (default 0: UTC).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub utc_offset_minutes: i32,
    /// The profile's time zone by IANA name (`Europe/Berlin`), daylight
    /// saving included: "today" for its users (a user's own zone overrides
    /// it). Not together with `utc_offset_minutes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    pub tables: Vec<TableProfile>,
}

fn is_zero(v: &i32) -> bool {
    *v == 0
}

/// A `related` condition of `from`'s filter reads `other`'s row named by
/// `from.column`: the device evaluates it on its own copy, so the profile
/// must keep every such row of a kept `from` row: `other` syncs every row,
/// or is reached from `from` through `column` by a related-rows rule.
fn check_kept_through(
    tables: &[SyncTable],
    from: &str,
    column: &str,
    other: &str,
) -> Result<(), Error> {
    let Some(o) = tables.iter().find(|t| t.name == other) else {
        return Ok(()); // refused by the filter's own validation
    };
    let kept = o.rules.iter().any(|r| match r {
        RowRule::All => true,
        RowRule::Related {
            table,
            column: c,
            foreign_column,
        } => table == from && *c == o.primary_key && foreign_column == column,
        _ => false,
    });
    if kept {
        Ok(())
    } else {
        Err(Error::InvalidProfile(format!(
            "table '{from}': a 'related' condition reads {other} through '{column}', so the device needs every {other} row a kept {from} row names: give {other} the rule {{\"kind\": \"related\", \"table\": \"{from}\", \"column\": \"{pk}\", \"foreign_column\": \"{column}\"}} or {{\"kind\": \"all\"}}",
            pk = o.primary_key
        )))
    }
}

/// Checks that `name` is an IANA time zone the compiled-in database knows.
pub fn check_time_zone(name: &str) -> Result<(), Error> {
    Zone::named(name).map(|_| ()).ok_or_else(|| {
        Error::InvalidProfile(format!(
            "time zone '{}' is not an IANA time zone name (for example Europe/Berlin)",
            name.chars().take(64).collect::<String>()
        ))
    })
}

/// A synced table as a device sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncTable {
    pub name: String,
    pub primary_key: String,
    /// Synced columns, primary key first.
    pub columns: Vec<Column>,
    pub rules: Vec<RowRule>,
    pub sync_interval_secs: u32,
    /// What the profile's users may write here.
    #[serde(default, skip_serializing_if = "WriteRights::is_everything")]
    pub writes: WriteRights,
    /// The data model's indexes on this table whose columns the device
    /// holds; the device builds them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub model_indexes: Vec<ModelIndex>,
    /// Indexes the device keeps on the table (see [`LocalIndex`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub indexes: Vec<LocalIndex>,
}

impl FilterTable for SyncTable {
    fn table_name(&self) -> &str {
        &self.name
    }

    fn primary_key(&self) -> &str {
        &self.primary_key
    }

    fn column_kind(&self, column: &str) -> Option<ColumnKind> {
        self.column(column).map(|c| c.kind)
    }
}

impl SyncTable {
    /// The column with this name.
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// Evaluates the rules of this table that need no other table against a
    /// row (device side). Related-rows rules are not decided here: a row that
    /// only a related-rows rule could select is reported as qualifying, and
    /// the store settles it against the related table's rows.
    pub fn row_qualifies(&self, row: &BTreeMap<String, Value>, ctx: &FilterContext) -> bool {
        self.rules.iter().any(|rule| match rule {
            RowRule::Related { .. } => true,
            other => self.own_rule_matches(other, row, ctx),
        })
    }

    /// Whether one rule that needs no other table (all, owned, custom)
    /// selects the row; related-rows rules answer false here.
    pub fn own_rule_matches(
        &self,
        rule: &RowRule,
        row: &BTreeMap<String, Value>,
        ctx: &FilterContext,
    ) -> bool {
        match rule {
            RowRule::All => true,
            RowRule::Owned { column } => {
                matches!(row.get(column), Some(Value::Text(v)) if *v == ctx.user_id)
            }
            // A condition on a related table is decided by the store's
            // settling, which reads the related rows.
            RowRule::Custom { filter } if filter.reads_related() => true,
            RowRule::Custom { filter } => {
                filter.lower(self, ctx).eval(&|c: &str| row.get(c).cloned())
            }
            RowRule::Related { .. } => false,
        }
    }

    /// True when a rule of this table reads the clock (relative dates).
    pub fn uses_clock(&self) -> bool {
        self.rules
            .iter()
            .any(|r| matches!(r, RowRule::Custom { filter } if filter.uses_clock()))
    }

    /// Tables this table's rules depend on (related-rows rules).
    pub fn depends_on(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .rules
            .iter()
            .filter_map(|r| match r {
                RowRule::Related { table, .. } => Some(table.clone()),
                _ => None,
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

/// One related-rows rule: `table.column` equals `other.foreign_column` of a
/// row of `other` that the profile keeps.
#[derive(Debug, Clone, Copy)]
pub struct RelatedRule<'a> {
    pub table: &'a SyncTable,
    pub column: &'a str,
    pub other: &'a str,
    pub foreign_column: &'a str,
}

impl SyncTable {
    /// This table's related-rows rules.
    pub fn related_rules(&self) -> impl Iterator<Item = RelatedRule<'_>> {
        self.rules.iter().filter_map(move |r| match r {
            RowRule::Related {
                table,
                column,
                foreign_column,
            } => Some(RelatedRule {
                table: self,
                column,
                other: table,
                foreign_column,
            }),
            _ => None,
        })
    }
}

/// The offline profile as issued to one user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncProfile {
    pub name: String,
    /// Increases each time an administrator publishes a change.
    pub version: i64,
    /// The user the profile was issued to ("rows owned by me").
    pub user_id: String,
    /// That user's team ("rows of my team"), if any.
    #[serde(default)]
    pub team_id: Option<String>,
    /// The version of the server's data model the profile was resolved
    /// against (0 from a server without model versions).
    #[serde(default)]
    pub model_version: i64,
    /// Fixed offset of the profile's time zone from UTC, in minutes: "today"
    /// in relative-date filters is the date at this offset, unless a
    /// `time_zone` is given.
    #[serde(default)]
    pub utc_offset_minutes: i32,
    /// The IANA time zone whose days relative dates count for this user:
    /// the user's own zone, else the profile's; none means the fixed offset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    pub tables: Vec<SyncTable>,
}

impl SyncProfile {
    /// What "current user", "my team" and "today" mean at `now_ms`.
    pub fn filter_context(&self, now_ms: i64) -> FilterContext {
        FilterContext {
            user_id: self.user_id.clone(),
            team_id: self.team_id.clone(),
            now_ms,
            zone: self.zone(),
        }
    }

    /// The zone of the profile's relative dates: `time_zone` when the
    /// compiled-in database knows it (the server checked it did when it
    /// issued the profile), else the fixed offset.
    pub fn zone(&self) -> Zone {
        self.time_zone
            .as_deref()
            .and_then(Zone::named)
            .unwrap_or(Zone::Fixed(self.utc_offset_minutes))
    }

    /// The profile as issued to a user whose own time zone (an IANA name)
    /// overrides the profile's; `None` keeps the profile's. An unknown name
    /// is [`Error::InvalidInput`].
    pub fn with_user_time_zone(mut self, zone: Option<&str>) -> Result<SyncProfile, Error> {
        if let Some(name) = zone {
            check_time_zone(name).map_err(|e| match e {
                Error::InvalidProfile(m) => Error::InvalidInput(m),
                other => other,
            })?;
            self.time_zone = Some(name.to_owned());
        }
        Ok(self)
    }

    /// Every related-rows rule of the profile, table by table.
    pub fn related_rules(&self) -> impl Iterator<Item = RelatedRule<'_>> {
        self.tables.iter().flat_map(SyncTable::related_rules)
    }

    /// The profile's tables ordered so that every table comes after the
    /// tables its related-rows rules read.
    pub fn tables_in_dependency_order(&self) -> Vec<&SyncTable> {
        let mut out: Vec<&SyncTable> = Vec::with_capacity(self.tables.len());
        let mut placed = BTreeSet::new();
        while out.len() < self.tables.len() {
            let before = out.len();
            for t in &self.tables {
                if placed.contains(t.name.as_str()) {
                    continue;
                }
                let ready = t
                    .depends_on()
                    .iter()
                    .all(|d| placed.contains(d.as_str()) || self.table(d).is_none());
                if ready {
                    placed.insert(t.name.as_str());
                    out.push(t);
                }
            }
            if out.len() == before {
                // A cycle (refused by validation): append the rest as listed.
                for t in &self.tables {
                    if placed.insert(t.name.as_str()) {
                        out.push(t);
                    }
                }
            }
        }
        out
    }

    /// The table with this name.
    pub fn table(&self, name: &str) -> Option<&SyncTable> {
        self.tables.iter().find(|t| t.name == name)
    }
}

impl OfflineProfile {
    /// Validates this profile against a data model and resolves it for a user.
    pub fn resolve(
        &self,
        model: &DataModel,
        version: i64,
        user_id: &str,
        team_id: Option<&str>,
    ) -> Result<SyncProfile, Error> {
        self.validate(model)?;
        let tables = self.resolve_tables(model)?;
        Ok(SyncProfile {
            name: self.name.clone(),
            version,
            user_id: user_id.to_owned(),
            team_id: team_id.map(str::to_owned),
            model_version: 0,
            utc_offset_minutes: self.utc_offset_minutes,
            time_zone: self.time_zone.clone(),
            tables,
        })
    }

    /// Every table resolved against the model, custom filters checked and
    /// in canonical form (a filter's `related` conditions read the other
    /// tables' synced columns), and every table a `related` condition
    /// reads kept whole enough for the device to evaluate it.
    fn resolve_tables(&self, model: &DataModel) -> Result<Vec<SyncTable>, Error> {
        let mut tables = Vec::with_capacity(self.tables.len());
        for t in &self.tables {
            tables.push(self.resolve_table(model, t)?);
        }
        let bare = tables.clone();
        let lookup = |n: &str| bare.iter().find(|t| t.name == n);
        for table in &mut tables {
            let rules = table
                .rules
                .iter()
                .map(|rule| match rule {
                    RowRule::Custom { filter } => Ok(RowRule::Custom {
                        filter: filter.validate_in(table, &lookup)?,
                    }),
                    other => Ok(other.clone()),
                })
                .collect::<Result<Vec<_>, Error>>()?;
            table.rules = rules;
        }
        for t in &tables {
            for rule in &t.rules {
                let RowRule::Custom { filter } = rule else {
                    continue;
                };
                for path in filter.related_paths(&t.name) {
                    let Some((from, column, other)) = path.last() else {
                        continue;
                    };
                    check_kept_through(&tables, from, column, other)?;
                }
            }
        }
        Ok(tables)
    }

    /// One table resolved against the model, its rules as written.
    fn resolve_table(&self, model: &DataModel, t: &TableProfile) -> Result<SyncTable, Error> {
        {
            let schema = model
                .table(&t.name)
                .ok_or_else(|| Error::UnknownTable(t.name.clone()))?;
            let mut columns =
                vec![schema.column(&schema.primary_key).cloned().ok_or_else(|| {
                    Error::InvalidProfile(format!("table '{}' has no primary key", t.name))
                })?];
            for c in &t.columns {
                if c == &schema.primary_key {
                    continue;
                }
                columns.push(
                    schema
                        .column(c)
                        .cloned()
                        .ok_or_else(|| Error::UnknownColumn {
                            table: t.name.clone(),
                            column: c.clone(),
                        })?,
                );
            }
            let mut table = SyncTable {
                name: t.name.clone(),
                primary_key: schema.primary_key.clone(),
                columns,
                rules: Vec::with_capacity(t.rules.len()),
                sync_interval_secs: t.sync_interval_secs,
                writes: t.writes.clone(),
                model_indexes: Vec::new(),
                indexes: t.indexes.clone(),
            };
            table.model_indexes = schema
                .indexes
                .iter()
                .filter(|ix| ix.columns.iter().all(|c| table.column(c).is_some()))
                .cloned()
                .collect();
            if table.indexes.len() > MAX_LOCAL_INDEXES {
                return Err(Error::InvalidProfile(format!(
                    "table '{}' declares {} local indexes; at most {MAX_LOCAL_INDEXES} are allowed",
                    t.name,
                    table.indexes.len()
                )));
            }
            for index in &table.indexes {
                index.validate(&table)?;
            }
            for c in table.writes.columns.iter().flatten() {
                if table.column(c).is_none() {
                    return Err(Error::InvalidProfile(format!(
                        "table '{}' lets its users write column '{c}', which it does not sync",
                        t.name
                    )));
                }
            }
            table.rules = t.rules.clone();
            Ok(table)
        }
    }

    /// Checks the profile against the data model, naming the first problem.
    pub fn validate(&self, model: &DataModel) -> Result<(), Error> {
        if self.name.trim().is_empty() {
            return Err(Error::InvalidProfile("the profile needs a name".into()));
        }
        if self.utc_offset_minutes.abs() > MAX_UTC_OFFSET_MINUTES {
            return Err(Error::InvalidProfile(format!(
                "utc_offset_minutes {} is outside -840 to 840",
                self.utc_offset_minutes
            )));
        }
        if let Some(zone) = &self.time_zone {
            check_time_zone(zone)?;
            if self.utc_offset_minutes != 0 {
                return Err(Error::InvalidProfile(
                    "give time_zone or utc_offset_minutes, not both".into(),
                ));
            }
        }
        let mut seen = BTreeSet::new();
        for t in &self.tables {
            let schema = model
                .table(&t.name)
                .ok_or_else(|| Error::UnknownTable(t.name.clone()))?;
            if !seen.insert(&t.name) {
                return Err(Error::InvalidProfile(format!(
                    "table '{}' is listed twice",
                    t.name
                )));
            }
            let mut listed = BTreeSet::new();
            for c in &t.columns {
                if schema.column(c).is_none() {
                    return Err(Error::UnknownColumn {
                        table: t.name.clone(),
                        column: c.clone(),
                    });
                }
                // A repeated column would be created twice on the device.
                if !listed.insert(c) {
                    return Err(Error::InvalidProfile(format!(
                        "table '{}': column '{c}' is listed twice",
                        t.name
                    )));
                }
            }
            if !(MIN_SYNC_INTERVAL_SECS..=MAX_SYNC_INTERVAL_SECS).contains(&t.sync_interval_secs) {
                return Err(Error::InvalidProfile(format!(
                    "table '{}': sync interval {} s is outside 5 minutes to 1 day",
                    t.name, t.sync_interval_secs
                )));
            }
            if t.rules.is_empty() {
                return Err(Error::InvalidProfile(format!(
                    "table '{}' has no row rule (use {{\"kind\": \"all\"}} for every row)",
                    t.name
                )));
            }
            if !t.indexes.is_empty() {
                // Checked against the table's synced columns.
                self.resolve_table(model, t)?;
            }
            for rule in &t.rules {
                match rule {
                    RowRule::All => {}
                    RowRule::Custom { .. } => {
                        // Checked against the table's synced columns (and
                        // a related table's): the device must hold every
                        // column a filter reads.
                        self.resolve_tables(model)?;
                    }
                    RowRule::Owned { column } => {
                        if !t.columns.contains(column) && column != &schema.primary_key {
                            return Err(Error::InvalidProfile(format!(
                                "table '{}': owner column '{column}' must be one of the synced columns",
                                t.name
                            )));
                        }
                        match schema.column(column) {
                            Some(c) if c.kind == ColumnKind::Text => {}
                            Some(_) => {
                                return Err(Error::InvalidProfile(format!(
                                    "table '{}': owner column '{column}' must hold text user ids",
                                    t.name
                                )));
                            }
                            None => {
                                return Err(Error::UnknownColumn {
                                    table: t.name.clone(),
                                    column: column.clone(),
                                });
                            }
                        }
                    }
                    RowRule::Related {
                        table: other,
                        column,
                        foreign_column,
                    } => {
                        let Some(other_profile) = self.tables.iter().find(|o| &o.name == other)
                        else {
                            return Err(Error::InvalidProfile(format!(
                                "table '{}': related-rows rule names table '{other}', which is not in the profile",
                                t.name
                            )));
                        };
                        let other_schema = model
                            .table(other)
                            .ok_or_else(|| Error::UnknownTable(other.clone()))?;
                        let synced = |tp: &TableProfile, ts: &TableSchema, c: &str| {
                            ts.column(c).is_some()
                                && (ts.primary_key == c || tp.columns.iter().any(|x| x == c))
                        };
                        if !synced(t, schema, column) {
                            return Err(Error::InvalidProfile(format!(
                                "table '{}': related-rows column '{column}' must be one of the table's synced columns",
                                t.name
                            )));
                        }
                        if !synced(other_profile, other_schema, foreign_column) {
                            return Err(Error::InvalidProfile(format!(
                                "table '{}': related-rows column '{other}.{foreign_column}' must be one of that table's synced columns",
                                t.name
                            )));
                        }
                    }
                }
            }
        }
        self.check_relationship_graph()
    }

    /// Refuses circular relationships and tables related (transitively) to
    /// more than [`MAX_RELATED_TABLES`] other tables.
    fn check_relationship_graph(&self) -> Result<(), Error> {
        let deps: BTreeMap<&str, Vec<&str>> = self
            .tables
            .iter()
            .map(|t| {
                let d = t
                    .rules
                    .iter()
                    .filter_map(|r| match r {
                        RowRule::Related { table, .. } => Some(table.as_str()),
                        _ => None,
                    })
                    .collect();
                (t.name.as_str(), d)
            })
            .collect();
        for start in deps.keys() {
            // Depth-first walk; a path that comes back to a table on it is a cycle.
            let mut reached = BTreeSet::new();
            let mut stack = vec![(*start, vec![*start])];
            while let Some((table, path)) = stack.pop() {
                for next in deps.get(table).into_iter().flatten() {
                    if path.contains(next) {
                        let mut cycle: Vec<&str> = path.clone();
                        cycle.push(next);
                        return Err(Error::InvalidProfile(format!(
                            "circular relationship: {}",
                            cycle.join(" -> ")
                        )));
                    }
                    reached.insert(*next);
                    let mut p = path.clone();
                    p.push(next);
                    stack.push((next, p));
                }
            }
            if reached.len() > MAX_RELATED_TABLES {
                return Err(Error::InvalidProfile(format!(
                    "table '{start}' is related to {} tables; at most {MAX_RELATED_TABLES} are allowed",
                    reached.len()
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
