//! The console's offline profile pages: the list of profiles, and one
//! profile's tables, columns, row rules and sync intervals with a form to
//! edit and publish it. Publishing goes through the same validation as
//! `PUT /v1/admin/profiles/{name}`; a refused profile is shown again as
//! submitted with the problem next to the table it concerns.
//!
//! Row rules read as sentences, and are edited as JSON lines with a rule
//! form (console.js) that writes them; a rule kind this console does not
//! know displays field by field. Fields of a table this form does not edit
//! are kept. The pages are maud templates.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use fieldsync_protocol::profile::{DataModel, OfflineProfile, TableProfile};
use maud::{Markup, PreEscaped, html};
use serde::Deserialize;
use serde_json::{Map, Value as Json, json};

use crate::App;
use crate::api::blocking;
use crate::console::auth::Admin;
use crate::console::html::{Section, json_text, notice, page, url_component};
use crate::console::response::{Form, error_page, html_response};
use crate::db::StoreError;

/// A sync interval in words (`5 min`, `1 h`, `1 day`).
pub fn interval_text(secs: u64) -> String {
    match secs {
        s if s % 86_400 == 0 && s > 0 => {
            let d = s / 86_400;
            format!("{d} day{}", if d == 1 { "" } else { "s" })
        }
        s if s % 3600 == 0 && s > 0 => format!("{} h", s / 3600),
        s if s % 60 == 0 && s > 0 => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
}

/// A row rule in words, as HTML: "Every row", "Rows whose
/// `resource_id` is the user", "Rows where `status` = "open" and
/// `priority` ≥ 3". A rule kind or filter this console does not know is
/// shown field by field, so a newer profile format still displays.
pub fn rule_text(rule: &Json) -> String {
    rule_markup(rule).into_string()
}

fn rule_markup(rule: &Json) -> Markup {
    let col = |v: &Json| html! { code { (v.as_str().unwrap_or_default()) } };
    match rule.get("kind").and_then(Json::as_str) {
        Some("all") => html! { "Every row" },
        Some("owned") => html! { "Rows whose " (col(&rule["column"])) " is the user" },
        Some("related") => html! {
            "Rows whose " (col(&rule["column"])) " is the " (col(&rule["foreign_column"]))
            " of a synced " strong { (rule["table"].as_str().unwrap_or_default()) } " row"
        },
        Some("custom") => html! { "Rows where " (filter_markup(&rule["filter"], true)) },
        _ => generic_markup(rule),
    }
}

/// Any JSON object, field by field (the fallback of [`rule_text`]).
fn generic_markup(rule: &Json) -> Markup {
    match rule {
        Json::Object(map) => {
            let kind = map
                .get("kind")
                .map(json_text)
                .unwrap_or_else(|| "rule".into());
            let rest: Vec<String> = map
                .iter()
                .filter(|(k, _)| k.as_str() != "kind")
                .map(|(k, v)| format!("{}: {}", k.replace('_', " "), json_text(v)))
                .collect();
            html! {
                strong { (kind) }
                @if !rest.is_empty() { " — " (rest.join("; ")) }
            }
        }
        other => html! { (json_text(other)) },
    }
}

/// A filter value as written in a rule: text quoted, numbers and booleans
/// bare.
fn value_markup(v: &Json) -> Markup {
    match v {
        Json::String(s) => html! { "“" (s) "”" },
        Json::Null => html! { "empty" },
        other => html! { (other.to_string()) },
    }
}

/// A custom filter in words; `top` leaves out the parentheses of an
/// outermost `and`/`or`.
fn filter_markup(f: &Json, top: bool) -> Markup {
    let col = html! { code { (f["column"].as_str().unwrap_or_default()) } };
    let value = || value_markup(&f["value"]);
    let values = || {
        let items: Vec<Markup> = f["values"]
            .as_array()
            .into_iter()
            .flatten()
            .map(value_markup)
            .collect();
        html! {
            @for (i, v) in items.iter().enumerate() {
                @if i > 0 { ", " }
                (v)
            }
        }
    };
    let days = f["days"].as_u64().unwrap_or(0);
    let group = |word: &str| {
        let parts: Vec<Markup> = f["filters"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|g| filter_markup(g, false))
            .collect();
        let wrap = !top && parts.len() >= 2;
        html! {
            @if wrap { "(" }
            @for (i, p) in parts.iter().enumerate() {
                @if i > 0 { " " em { (word) } " " }
                (p)
            }
            @if wrap { ")" }
        }
    };
    let phrase = |text: &str| html! { (col) " " (text) };
    match f["op"].as_str().unwrap_or_default() {
        "and" => group("and"),
        "or" => group("or"),
        "not" => html! { em { "not" } " (" (filter_markup(&f["filter"], true)) ")" },
        "eq" => html! { (col) " = " (value()) },
        "ne" => html! { (col) " ≠ " (value()) },
        "gt" => html! { (col) " > " (value()) },
        "ge" => html! { (col) " ≥ " (value()) },
        "lt" => html! { (col) " < " (value()) },
        "le" => html! { (col) " ≤ " (value()) },
        "in" => html! { (col) " is one of " (values()) },
        "not_in" => html! { (col) " is set and none of " (values()) },
        "is_null" => phrase("is empty"),
        "not_null" => phrase("is set"),
        "begins_with" => html! { (col) " begins with " (value()) },
        "ends_with" => html! { (col) " ends with " (value()) },
        "contains" => html! { (col) " contains " (value()) },
        "eq_current_user" => phrase("is the user"),
        "eq_current_team" => phrase("is the user's team"),
        "today" => phrase("is today"),
        "yesterday" => phrase("is yesterday"),
        "tomorrow" => phrase("is tomorrow"),
        "last_days" => phrase(&format!("is today or in the last {days} days")),
        "next_days" => phrase(&format!("is today or in the next {days} days")),
        "on_or_after_today" => phrase("is today or later"),
        "this_month" => phrase("is this month"),
        "last_month" => phrase("is last month"),
        "next_month" => phrase("is next month"),
        _ => generic_markup(f),
    }
}

/// `GET /console/profiles`.
pub async fn list(State(app): State<Arc<App>>, admin: Admin) -> Response {
    let db = app.db.clone();
    let loaded = blocking(move || Ok::<_, StoreError>((db.profiles()?, db.users()?))).await;
    let (profiles, users) = match loaded {
        Ok(v) => v,
        Err(e) => return error_page(&e),
    };
    let body = html! {
        p.lead { "An offline profile says which tables, columns and rows each user's device keeps, and how often each table syncs. Select a profile to view, edit and publish it." }
        table.grid.profiles {
            thead { tr {
                th scope="col" { "Profile" } th scope="col" { "Description" } th scope="col" { "Version" }
                th scope="col" { "Tables" } th scope="col" { "Users" }
            } }
            tbody {
                @for (p, version) in &profiles {
                    tr {
                        td { a href={ "/console/profiles/" (url_component(&p.name)) } { (p.name) } }
                        td { (p.description) }
                        td.num { (version) }
                        td.num { (p.tables.len()) }
                        td.num { (users.iter().filter(|u| u.profile == p.name).count()) }
                    }
                }
            }
        }
    }
    .into_string();
    html_response(
        StatusCode::OK,
        page(
            "Offline profiles",
            Section::Profiles,
            &admin.name,
            &admin.csrf,
            &body,
        ),
    )
}

/// One table of the editor as shown: stored values, or the submitted ones.
#[derive(Debug, Clone, Default)]
struct TableDraft {
    included: bool,
    columns: Vec<String>,
    rules_text: String,
    interval_minutes: String,
}

/// The editor's state: a draft per data-model table, in display order.
#[derive(Debug, Clone, Default)]
struct Draft {
    description: String,
    tables: Vec<(String, TableDraft)>,
}

fn profile_json(p: &OfflineProfile) -> Json {
    serde_json::to_value(p).unwrap_or(Json::Null)
}

fn draft_of(profile: &OfflineProfile, model: &DataModel) -> Draft {
    let pj = profile_json(profile);
    let mut tables = Vec::new();
    let stored: Vec<&Json> = pj["tables"].as_array().into_iter().flatten().collect();
    for t in &stored {
        let name = t["name"].as_str().unwrap_or_default().to_owned();
        let rules_text = t["rules"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| serde_json::to_string(r).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n");
        let secs = t["sync_interval_secs"].as_u64().unwrap_or(300);
        tables.push((
            name,
            TableDraft {
                included: true,
                columns: t["columns"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|c| c.as_str().map(str::to_owned))
                    .collect(),
                rules_text,
                interval_minutes: if secs % 60 == 0 {
                    (secs / 60).to_string()
                } else {
                    format!("{:.2}", secs as f64 / 60.0)
                },
            },
        ));
    }
    for t in &model.tables {
        if !tables.iter().any(|(n, _)| n == &t.name) {
            tables.push((
                t.name.clone(),
                TableDraft {
                    included: false,
                    columns: Vec::new(),
                    rules_text: "{\"kind\":\"all\"}".into(),
                    interval_minutes: "60".into(),
                },
            ));
        }
    }
    Draft {
        description: profile.description.clone(),
        tables,
    }
}

fn draft_from_form(form: &Form, model: &DataModel, stored: &Draft) -> Draft {
    let mut tables = Vec::new();
    // Keep the stored order; tables the model has but the draft lacks follow.
    let order: Vec<String> = stored
        .tables
        .iter()
        .map(|(n, _)| n.clone())
        .chain(model.tables.iter().map(|t| t.name.clone()))
        .fold(Vec::new(), |mut acc, n| {
            if !acc.contains(&n) {
                acc.push(n);
            }
            acc
        });
    for name in order {
        let included = form.all("include").any(|v| v == name);
        let col_key = format!("col:{name}");
        let columns = form.all(&col_key).map(str::to_owned).collect();
        let rules_text = form
            .get(&format!("rules:{name}"))
            .unwrap_or_default()
            .replace("\r\n", "\n");
        let interval_minutes = form
            .get(&format!("interval:{name}"))
            .unwrap_or_default()
            .trim()
            .to_owned();
        tables.push((
            name,
            TableDraft {
                included,
                columns,
                rules_text,
                interval_minutes,
            },
        ));
    }
    Draft {
        description: form.get("description").unwrap_or_default().to_owned(),
        tables,
    }
}

/// An error in the form, with the table it concerns when known.
struct FormError {
    table: Option<String>,
    message: String,
}

/// Builds the profile from a draft, keeping stored fields this form does
/// not edit. Errors name the table and rule line.
fn profile_from_draft(
    name: &str,
    draft: &Draft,
    stored: &OfflineProfile,
) -> Result<OfflineProfile, FormError> {
    let stored_json = profile_json(stored);
    let stored_tables: BTreeMap<String, Map<String, Json>> = stored_json["tables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| {
            let o = t.as_object()?;
            Some((o.get("name")?.as_str()?.to_owned(), o.clone()))
        })
        .collect();
    let mut tables = Vec::new();
    for (table, d) in draft.tables.iter().filter(|(_, d)| d.included) {
        let err = |message: String| FormError {
            table: Some(table.clone()),
            message,
        };
        let minutes: f64 = d.interval_minutes.parse().map_err(|_| {
            err(format!(
                "table '{table}': the sync interval '{}' is not a number of minutes",
                d.interval_minutes
            ))
        })?;
        if !minutes.is_finite() || !(0.0..=1e9).contains(&minutes) {
            return Err(err(format!(
                "table '{table}': the sync interval must be a positive number of minutes"
            )));
        }
        let mut rules = Vec::new();
        for (i, line) in d.rules_text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let rule: Json = serde_json::from_str(line).map_err(|e| {
                err(format!(
                    "table '{table}', rule line {}: not a JSON object: {e}",
                    i + 1
                ))
            })?;
            if !rule.is_object() {
                return Err(err(format!(
                    "table '{table}', rule line {}: a rule is a JSON object such as {{\"kind\": \"all\"}}",
                    i + 1
                )));
            }
            rules.push(rule);
        }
        let mut t = stored_tables.get(table).cloned().unwrap_or_default();
        t.insert("name".into(), json!(table));
        t.insert("columns".into(), json!(d.columns));
        t.insert("rules".into(), Json::Array(rules));
        t.insert(
            "sync_interval_secs".into(),
            json!((minutes * 60.0).round() as u64),
        );
        let t = Json::Object(t);
        serde_json::from_value::<TableProfile>(t.clone())
            .map_err(|e| err(format!("table '{table}': {e}")))?;
        tables.push(t);
    }
    let mut p = stored_json.as_object().cloned().unwrap_or_default();
    p.insert("name".into(), json!(name));
    p.insert("description".into(), json!(draft.description));
    p.insert("tables".into(), Json::Array(tables));
    serde_json::from_value(Json::Object(p)).map_err(|e| {
        let message = e.to_string();
        FormError {
            table: None,
            message: format!("the profile cannot be read: {message}"),
        }
    })
}

fn table_of_message(message: &str, draft: &Draft) -> Option<String> {
    draft
        .tables
        .iter()
        .map(|(n, _)| n)
        .find(|n| message.contains(&format!("table '{n}'")))
        .cloned()
}

fn overview(profile: &OfflineProfile) -> String {
    let pj = profile_json(profile);
    html! {
        table.grid.overview {
            thead { tr {
                th scope="col" { "Table" } th scope="col" { "Columns" }
                th scope="col" { "Row rules (a row syncs when any matches)" } th scope="col" { "Sync interval" }
            } }
            tbody {
                @for t in pj["tables"].as_array().into_iter().flatten() {
                    tr {
                        th scope="row" { (t["name"].as_str().unwrap_or_default()) }
                        td.cols {
                            @for (i, col) in t["columns"].as_array().into_iter().flatten().filter_map(|c| c.as_str()).enumerate() {
                                @if i > 0 { " " }
                                code { (col) }
                            }
                        }
                        td { ul.rules {
                            @for r in t["rules"].as_array().into_iter().flatten() {
                                li { (rule_markup(r)) }
                            }
                        } }
                        td { (interval_text(t["sync_interval_secs"].as_u64().unwrap_or(0))) }
                    }
                }
            }
        }
    }
    .into_string()
}

fn editor(
    name: &str,
    draft: &Draft,
    model: &DataModel,
    csrf: &str,
    error: Option<&FormError>,
) -> String {
    // The data model for the rule builder (console.js): tables, their
    // columns and kinds.
    let model_json: Json = model
        .tables
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                Json::Array(
                    t.columns
                        .iter()
                        .map(|c| json!({"name": c.name, "kind": c.kind}))
                        .collect(),
                ),
            )
        })
        .collect::<Map<String, Json>>()
        .into();
    html! {
        form.editor method="post" action={ "/console/profiles/" (url_component(name)) } novalidate data-model=(model_json.to_string()) {
            input type="hidden" name="csrf" value=(csrf);
            div.card {
                label for="description" { "Description" }
                input #description name="description" type="text" value=(draft.description);
            }
            p.hint {
                "Tick a table to include it. Build a row rule with the rule form under each table (kind, column, operator, value) and "
                em { "Add rule" }
                "; rules are kept one per line as JSON, which you may also edit, for example "
                code { r#"{"kind":"all"}"# } " (every row) or "
                code { r#"{"kind":"owned","column":"resource_id"}"# }
                " (rows assigned to the user). A row syncs when any of its table's rules matches."
            }
            @for (table, d) in &draft.tables {
                @if let Some(schema) = model.table(table) {
                    @let invalid = error.filter(|e| e.table.as_deref() == Some(table.as_str()));
                    fieldset.card.table.invalid[invalid.is_some()] id={ "table-" (table) } data-table=(table) {
                        legend { label {
                            input type="checkbox" name="include" value=(table) checked[d.included];
                            " " (table)
                        } }
                        @if let Some(e) = invalid {
                            p.field-error role="alert" { (e.message) }
                        }
                        div.table-fields {
                            div.columns-pick {
                                span.label { "Columns" }
                                span.pk title="The primary key always syncs" { code { (schema.primary_key) } " (key)" }
                                @for c in schema.columns.iter().filter(|c| c.name != schema.primary_key) {
                                    label.col {
                                        input type="checkbox" name={ "col:" (table) } value=(c.name) checked[d.columns.iter().any(|x| x == &c.name)];
                                        " " (c.name)
                                    }
                                }
                            }
                            div.rules-edit {
                                label for={ "rules-" (table) } { "Row rules (JSON, one per line)" }
                                textarea id={ "rules-" (table) } name={ "rules:" (table) } rows=(d.rules_text.lines().count().clamp(2, 10) + 1) spellcheck="false" { (d.rules_text) }
                                div.rule-builder data-table=(table) hidden {}
                            }
                            div.interval {
                                label for={ "interval-" (table) } { "Sync interval (minutes)" }
                                input id={ "interval-" (table) } name={ "interval:" (table) } type="text" inputmode="decimal" value=(d.interval_minutes);
                                span.hint { "5 minutes to 1 day (1440)" }
                            }
                        }
                    }
                }
            }
            div.actions {
                button.primary type="submit" { "Publish profile" }
                " "
                span.hint { "Devices download a published profile at their next sync." }
            }
        }
    }
    .into_string()
}

/// Query of a profile page.
#[derive(Debug, Default, Deserialize)]
pub struct ProfileQuery {
    published: Option<i64>,
}

async fn load(
    app: &Arc<App>,
    name: &str,
) -> Result<Option<(OfflineProfile, i64)>, crate::error::ApiError> {
    let db = app.db.clone();
    let n = name.to_owned();
    blocking(move || db.profile(&n)).await
}

fn not_found(admin: &Admin, name: &str) -> Response {
    html_response(
        StatusCode::NOT_FOUND,
        page(
            "Offline profiles",
            Section::Profiles,
            &admin.name,
            &admin.csrf,
            &html! {
                (PreEscaped(notice("error", &format!("There is no offline profile named '{name}'."))))
                p { a href="/console/profiles" { "All profiles" } }
            }
            .into_string(),
        ),
    )
}

#[allow(clippy::too_many_arguments)] // one page, drawn from all of its parts
fn render(
    admin: &Admin,
    name: &str,
    stored: &OfflineProfile,
    version: i64,
    model: &DataModel,
    draft: &Draft,
    top: Option<String>,
    error: Option<&FormError>,
) -> String {
    let body = html! {
        p.breadcrumb { a href="/console/profiles" { "Offline profiles" } " › " (name) }
        (PreEscaped(top.unwrap_or_default()))
        section { h2 { "Published version " (version) } (PreEscaped(overview(stored))) }
        section { h2 { "Edit and publish" } (PreEscaped(editor(name, draft, model, &admin.csrf, error))) }
    }
    .into_string();
    page(
        &format!("Offline profile {name}"),
        Section::Profiles,
        &admin.name,
        &admin.csrf,
        &body,
    )
}

/// `GET /console/profiles/{name}`.
pub async fn show(
    State(app): State<Arc<App>>,
    admin: Admin,
    Path(name): Path<String>,
    q: Result<Query<ProfileQuery>, QueryRejection>,
) -> Response {
    let (stored, version) = match load(&app, &name).await {
        Ok(Some(p)) => p,
        Ok(None) => return not_found(&admin, &name),
        Err(e) => return error_page(&e),
    };
    let in_force = app.db.cached_model();
    let model = &in_force.model;
    let draft = draft_of(&stored, model);
    let top = q.ok().and_then(|Query(q)| q.published).map(|v| {
        notice(
            "ok",
            &format!("Published version {v}. Devices pick it up at their next sync."),
        )
    });
    html_response(
        StatusCode::OK,
        render(&admin, &name, &stored, version, model, &draft, top, None),
    )
}

/// `POST /console/profiles/{name}`: validates and publishes the edited
/// profile, or shows the form again with the problem.
pub async fn publish(
    State(app): State<Arc<App>>,
    admin: Admin,
    Path(name): Path<String>,
    form: Form,
) -> Response {
    if let Err(r) = admin.check_csrf(&form) {
        return *r;
    }
    let (stored, version) = match load(&app, &name).await {
        Ok(Some(p)) => p,
        Ok(None) => return not_found(&admin, &name),
        Err(e) => return error_page(&e),
    };
    let model = app.db.cached_model().model.clone();
    let draft = draft_from_form(&form, &model, &draft_of(&stored, &model));
    let refused = |e: FormError| {
        let top = notice("error", &format!("Not published: {}", e.message));
        html_response(
            StatusCode::BAD_REQUEST,
            render(
                &admin,
                &name,
                &stored,
                version,
                &model,
                &draft,
                Some(top),
                Some(&e),
            ),
        )
    };
    let profile = match profile_from_draft(&name, &draft, &stored) {
        Ok(p) => p,
        Err(mut e) => {
            if e.table.is_none() {
                e.table = table_of_message(&e.message, &draft);
            }
            return refused(e);
        }
    };
    let db = app.db.clone();
    match blocking(move || db.put_profile(&profile)).await {
        Ok(v) => Redirect::to(&format!(
            "/console/profiles/{}?published={v}",
            url_component(&name)
        ))
        .into_response(),
        Err(e) if e.status.is_client_error() => {
            let table = table_of_message(&e.message, &draft);
            refused(FormError {
                table,
                message: e.message,
            })
        }
        Err(e) => error_page(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_in_words() {
        assert_eq!(interval_text(300), "5 min");
        assert_eq!(interval_text(3600), "1 h");
        assert_eq!(interval_text(86_400), "1 day");
        assert_eq!(interval_text(90), "90 s");
    }

    #[test]
    fn rules_read_as_sentences() {
        assert_eq!(rule_text(&json!({"kind": "all"})), "Every row");
        assert_eq!(
            rule_text(&json!({"kind": "owned", "column": "resource_id"})),
            "Rows whose <code>resource_id</code> is the user"
        );
        let r = json!({"kind": "custom", "filter": {"op": "and", "filters": [
            {"op": "eq", "column": "status", "value": "open"},
            {"op": "or", "filters": [
                {"op": "ge", "column": "priority", "value": 3},
                {"op": "next_days", "column": "start_time", "days": 7}]},
            {"op": "not", "filter": {"op": "is_null", "column": "notes"}}]}});
        assert_eq!(
            rule_text(&r),
            "Rows where <code>status</code> = “open” <em>and</em> (<code>priority</code> ≥ 3 \
             <em>or</em> <code>start_time</code> is today or in the next 7 days) <em>and</em> \
             <em>not</em> (<code>notes</code> is empty)"
        );
    }

    #[test]
    fn rules_render_generically_for_unknown_kinds() {
        let r = json!({"kind": "nearby", "column": "site", "radius_km": 5});
        let text = rule_text(&r);
        assert!(text.starts_with("<strong>nearby</strong>"));
        assert!(text.contains("column: site"));
        let text =
            rule_text(&json!({"kind": "custom", "filter": {"op": "<script>", "column": "x"}}));
        assert!(!text.contains("<script>"), "{text}");
    }

    #[test]
    fn form_round_trips_the_default_profile() {
        let model = crate::field_service_model();
        let profile = crate::field_service_profile();
        let draft = draft_of(&profile, &model);
        let mut fields = vec![("description".to_owned(), profile.description.clone())];
        for (t, d) in &draft.tables {
            if d.included {
                fields.push(("include".into(), t.clone()));
            }
            for c in &d.columns {
                fields.push((format!("col:{t}"), c.clone()));
            }
            fields.push((format!("rules:{t}"), d.rules_text.clone()));
            fields.push((format!("interval:{t}"), d.interval_minutes.clone()));
        }
        let back = draft_from_form(&Form(fields), &model, &draft);
        let rebuilt = profile_from_draft(&profile.name, &back, &profile)
            .unwrap_or_else(|e| panic!("{}", e.message));
        assert_eq!(rebuilt, profile);
    }

    #[test]
    fn bad_rule_line_names_table_and_line() {
        let model = crate::field_service_model();
        let profile = crate::field_service_profile();
        let mut draft = draft_of(&profile, &model);
        draft.tables[0].1.rules_text = "{\"kind\":\"all\"}\nnot json".into();
        let Err(e) = profile_from_draft(&profile.name, &draft, &profile) else {
            panic!("the draft should be refused");
        };
        assert_eq!(e.table.as_deref(), Some("bookings"));
        assert!(e.message.contains("rule line 2"), "{}", e.message);
    }
}
