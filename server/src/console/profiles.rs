//! The console's offline profile pages: the list of profiles, and one
//! profile's tables, columns, row rules and sync intervals with a form to
//! edit and publish it. Publishing goes through the same validation as
//! `PUT /v1/admin/profiles/{name}`; a refused profile is shown again as
//! submitted with the problem next to the table it concerns.
//!
//! Row rules are shown and edited generically from their JSON (one rule
//! per line), so rule kinds added to the profile format display without
//! changes here. Fields of a table this form does not edit are kept.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use fieldsync_core::profile::{DataModel, OfflineProfile, TableProfile};
use serde::Deserialize;
use serde_json::{Map, Value as Json, json};

use crate::App;
use crate::api::blocking;
use crate::console::auth::Admin;
use crate::console::html::{Section, esc, json_text, notice, page, url_component};
use crate::console::{Form, error_page, html_response};

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
    let col = |v: &Json| format!("<code>{}</code>", esc(v.as_str().unwrap_or_default()));
    match rule.get("kind").and_then(Json::as_str) {
        Some("all") => "Every row".to_owned(),
        Some("owned") => format!("Rows whose {} is the user", col(&rule["column"])),
        Some("related") => format!(
            "Rows whose {} is the {} of a synced <strong>{}</strong> row",
            col(&rule["column"]),
            col(&rule["foreign_column"]),
            esc(rule["table"].as_str().unwrap_or_default()),
        ),
        Some("custom") => format!("Rows where {}", filter_text(&rule["filter"], true)),
        _ => generic_text(rule),
    }
}

/// Any JSON object, field by field (the fallback of [`rule_text`]).
fn generic_text(rule: &Json) -> String {
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
            if rest.is_empty() {
                format!("<strong>{}</strong>", esc(&kind))
            } else {
                format!(
                    "<strong>{}</strong> — {}",
                    esc(&kind),
                    esc(&rest.join("; "))
                )
            }
        }
        other => esc(&json_text(other)),
    }
}

/// A filter value as written in a rule: text quoted, numbers and booleans
/// bare.
fn value_html(v: &Json) -> String {
    match v {
        Json::String(s) => format!("“{}”", esc(s)),
        Json::Null => "empty".to_owned(),
        other => esc(&other.to_string()),
    }
}

/// A custom filter in words, as HTML; `top` leaves out the parentheses of
/// an outermost `and`/`or`.
fn filter_text(f: &Json, top: bool) -> String {
    let col = format!(
        "<code>{}</code>",
        esc(f["column"].as_str().unwrap_or_default())
    );
    let value = || value_html(&f["value"]);
    let values = || {
        f["values"]
            .as_array()
            .into_iter()
            .flatten()
            .map(value_html)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let days = f["days"].as_u64().unwrap_or(0);
    let group = |word: &str| {
        let parts: Vec<String> = f["filters"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|g| filter_text(g, false))
            .collect();
        let joined = parts.join(&format!(" <em>{word}</em> "));
        if top || parts.len() < 2 {
            joined
        } else {
            format!("({joined})")
        }
    };
    match f["op"].as_str().unwrap_or_default() {
        "and" => group("and"),
        "or" => group("or"),
        "not" => format!("<em>not</em> ({})", filter_text(&f["filter"], true)),
        "eq" => format!("{col} = {}", value()),
        "ne" => format!("{col} ≠ {}", value()),
        "gt" => format!("{col} &gt; {}", value()),
        "ge" => format!("{col} ≥ {}", value()),
        "lt" => format!("{col} &lt; {}", value()),
        "le" => format!("{col} ≤ {}", value()),
        "in" => format!("{col} is one of {}", values()),
        "not_in" => format!("{col} is set and none of {}", values()),
        "is_null" => format!("{col} is empty"),
        "not_null" => format!("{col} is set"),
        "begins_with" => format!("{col} begins with {}", value()),
        "ends_with" => format!("{col} ends with {}", value()),
        "contains" => format!("{col} contains {}", value()),
        "eq_current_user" => format!("{col} is the user"),
        "eq_current_team" => format!("{col} is the user's team"),
        "today" => format!("{col} is today"),
        "yesterday" => format!("{col} is yesterday"),
        "tomorrow" => format!("{col} is tomorrow"),
        "last_days" => format!("{col} is today or in the last {days} days"),
        "next_days" => format!("{col} is today or in the next {days} days"),
        "on_or_after_today" => format!("{col} is today or later"),
        "this_month" => format!("{col} is this month"),
        "last_month" => format!("{col} is last month"),
        "next_month" => format!("{col} is next month"),
        _ => generic_text(f),
    }
}

/// `GET /console/profiles`.
pub async fn list(State(app): State<Arc<App>>, admin: Admin) -> Response {
    let db = app.db.clone();
    let loaded = blocking(move || Ok((db.profiles()?, db.users()?))).await;
    let (profiles, users) = match loaded {
        Ok(v) => v,
        Err(e) => return error_page(&e),
    };
    let mut body = String::from(
        "<p class=\"lead\">An offline profile says which tables, columns and rows each user's device keeps, and how often each table syncs. Select a profile to view, edit and publish it.</p>
<table class=\"grid profiles\"><thead><tr><th scope=\"col\">Profile</th><th scope=\"col\">Description</th><th scope=\"col\">Version</th><th scope=\"col\">Tables</th><th scope=\"col\">Users</th></tr></thead><tbody>",
    );
    for (p, version) in &profiles {
        let n_users = users.iter().filter(|u| u.profile == p.name).count();
        let _ = write!(
            body,
            "<tr><td><a href=\"/console/profiles/{href}\">{name}</a></td><td>{desc}</td><td class=\"num\">{version}</td><td class=\"num\">{tables}</td><td class=\"num\">{n_users}</td></tr>",
            href = url_component(&p.name),
            name = esc(&p.name),
            desc = esc(&p.description),
            tables = p.tables.len(),
        );
    }
    body.push_str("</tbody></table>");
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
    let mut out = String::from(
        "<table class=\"grid overview\"><thead><tr><th scope=\"col\">Table</th><th scope=\"col\">Columns</th><th scope=\"col\">Row rules (a row syncs when any matches)</th><th scope=\"col\">Sync interval</th></tr></thead><tbody>",
    );
    for t in pj["tables"].as_array().into_iter().flatten() {
        let rules: Vec<String> = t["rules"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| format!("<li>{}</li>", rule_text(r)))
            .collect();
        let cols: Vec<String> = t["columns"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c.as_str())
            .map(|c| format!("<code>{}</code>", esc(c)))
            .collect();
        let _ = write!(
            out,
            "<tr><th scope=\"row\">{}</th><td class=\"cols\">{}</td><td><ul class=\"rules\">{}</ul></td><td>{}</td></tr>",
            esc(t["name"].as_str().unwrap_or_default()),
            cols.join(" "),
            rules.join(""),
            esc(&interval_text(
                t["sync_interval_secs"].as_u64().unwrap_or(0)
            )),
        );
    }
    out.push_str("</tbody></table>");
    out
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
    let mut out = format!(
        "<form class=\"editor\" method=\"post\" action=\"/console/profiles/{href}\" novalidate data-model=\"{model}\">
<input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">
<div class=\"card\"><label for=\"description\">Description</label>
<input id=\"description\" name=\"description\" type=\"text\" value=\"{desc}\"></div>
<p class=\"hint\">Tick a table to include it. Build a row rule with the rule form under each table (kind, column, operator, value) and <em>Add rule</em>; rules are kept one per line as JSON, which you may also edit, for example <code>{{\"kind\":\"all\"}}</code> (every row) or <code>{{\"kind\":\"owned\",\"column\":\"resource_id\"}}</code> (rows assigned to the user). A row syncs when any of its table's rules matches.</p>",
        href = url_component(name),
        csrf = esc(csrf),
        desc = esc(&draft.description),
        model = esc(&model_json.to_string()),
    );
    for (table, d) in &draft.tables {
        let Some(schema) = model.table(table) else {
            continue;
        };
        let invalid = error.filter(|e| e.table.as_deref() == Some(table.as_str()));
        let _ = write!(
            out,
            "<fieldset class=\"card table{cls}\" id=\"table-{id}\" data-table=\"{id}\">
<legend><label><input type=\"checkbox\" name=\"include\" value=\"{id}\"{checked}> {id}</label></legend>",
            id = esc(table),
            cls = if invalid.is_some() { " invalid" } else { "" },
            checked = if d.included { " checked" } else { "" },
        );
        if let Some(e) = invalid {
            let _ = write!(
                out,
                "<p class=\"field-error\" role=\"alert\">{}</p>",
                esc(&e.message)
            );
        }
        out.push_str("<div class=\"table-fields\"><div class=\"columns-pick\"><span class=\"label\">Columns</span>");
        let _ = write!(
            out,
            "<span class=\"pk\" title=\"The primary key always syncs\"><code>{}</code> (key)</span>",
            esc(&schema.primary_key)
        );
        for c in schema
            .columns
            .iter()
            .filter(|c| c.name != schema.primary_key)
        {
            let on = d.columns.iter().any(|x| x == &c.name);
            let _ = write!(
                out,
                "<label class=\"col\"><input type=\"checkbox\" name=\"col:{t}\" value=\"{c}\"{on}> {c}</label>",
                t = esc(table),
                c = esc(&c.name),
                on = if on { " checked" } else { "" },
            );
        }
        let _ = write!(
            out,
            "</div>
<div class=\"rules-edit\"><label for=\"rules-{t}\">Row rules (JSON, one per line)</label>
<textarea id=\"rules-{t}\" name=\"rules:{t}\" rows=\"{rows}\" spellcheck=\"false\">{rules}</textarea>
<div class=\"rule-builder\" data-table=\"{t}\" hidden></div></div>
<div class=\"interval\"><label for=\"interval-{t}\">Sync interval (minutes)</label>
<input id=\"interval-{t}\" name=\"interval:{t}\" type=\"text\" inputmode=\"decimal\" value=\"{iv}\"><span class=\"hint\">5 minutes to 1 day (1440)</span></div>
</div></fieldset>",
            t = esc(table),
            rows = d.rules_text.lines().count().clamp(2, 10) + 1,
            rules = esc(&d.rules_text),
            iv = esc(&d.interval_minutes),
        );
    }
    out.push_str("<div class=\"actions\"><button type=\"submit\" class=\"primary\">Publish profile</button> <span class=\"hint\">Devices download a published profile at their next sync.</span></div></form>");
    out
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
            &format!(
                "{}<p><a href=\"/console/profiles\">All profiles</a></p>",
                notice(
                    "error",
                    &format!("There is no offline profile named '{name}'.")
                )
            ),
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
    let body = format!(
        "<p class=\"breadcrumb\"><a href=\"/console/profiles\">Offline profiles</a> › {name_h}</p>
{top}
<section><h2>Published version {version}</h2>{overview}</section>
<section><h2>Edit and publish</h2>{editor}</section>",
        name_h = esc(name),
        top = top.unwrap_or_default(),
        overview = overview(stored),
        editor = editor(name, draft, model, &admin.csrf, error),
    );
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
    let model = app.db.model();
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
    let model = app.db.model().clone();
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
