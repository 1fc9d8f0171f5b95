//! The console's Data model page: the version in force (tables, columns
//! with their kinds, choice lists, defaults, lookups, and indexes), every
//! version published with what it changed, and a form that publishes a new
//! version from its JSON (checked as `PUT /v1/admin/model` checks it, the
//! problem shown above the form with the text kept).

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use fieldsync_core::model::ModelChange;
use fieldsync_core::profile::DataModel;
use serde::Deserialize;

use crate::App;
use crate::api::blocking;
use crate::console::auth::Admin;
use crate::console::html::{Section, esc, notice, page, value_text};
use crate::console::response::{Form, error_page, html_response};
use crate::model::{ModelVersion, SOURCE_ADMIN};

#[derive(Debug, Deserialize)]
pub struct ShowQuery {
    published: Option<i64>,
}

/// `GET /console/model`.
pub async fn show(
    State(app): State<Arc<App>>,
    admin: Admin,
    q: Result<Query<ShowQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let top = q
        .ok()
        .and_then(|Query(q)| q.published)
        .map(|v| {
            notice(
                "ok",
                &format!("Version {v} is in force. Devices follow at their next sync."),
            )
        })
        .unwrap_or_default();
    render(&app, &admin, StatusCode::OK, &top, None).await
}

/// `POST /console/model`: publishes the model in the form's `model` field.
pub async fn publish(State(app): State<Arc<App>>, admin: Admin, form: Form) -> Response {
    if let Err(r) = admin.check_csrf(&form) {
        return *r;
    }
    let text = form.get("model").unwrap_or_default().to_owned();
    let model = match DataModel::parse(&text) {
        Ok(m) => m,
        Err(e) => {
            let top = notice("error", &format!("Not published: {e}"));
            return render(&app, &admin, StatusCode::BAD_REQUEST, &top, Some(&text)).await;
        }
    };
    let db = app.db.clone();
    match blocking(move || db.publish_model(&model, SOURCE_ADMIN)).await {
        Ok(p) => Redirect::to(&format!("/console/model?published={}", p.version)).into_response(),
        Err(e) if e.status.is_client_error() => {
            let top = notice("error", &format!("Not published: {}", e.message));
            render(&app, &admin, StatusCode::BAD_REQUEST, &top, Some(&text)).await
        }
        Err(e) => error_page(&e),
    }
}

async fn render(
    app: &Arc<App>,
    admin: &Admin,
    status: StatusCode,
    top: &str,
    draft: Option<&str>,
) -> Response {
    let db = app.db.clone();
    let versions = match blocking(move || db.model_versions()).await {
        Ok(v) => v,
        Err(e) => return error_page(&e),
    };
    let Some(current) = versions.first() else {
        return html_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            page(
                "Data model",
                Section::DataModel,
                &admin.name,
                &admin.csrf,
                &notice("error", "No data model is recorded."),
            ),
        );
    };
    let mut body = String::from(top);
    let _ = write!(
        body,
        "<p class=\"count\">Version {} in force, published {} ({}). {} table{}.</p>",
        current.version,
        esc(&current.published_at),
        if current.source == SOURCE_ADMIN {
            "by an administrator"
        } else {
            "at server start"
        },
        current.model.tables.len(),
        if current.model.tables.len() == 1 {
            ""
        } else {
            "s"
        }
    );
    body.push_str(&tables(&current.model));
    body.push_str(&history(&versions));
    let text = match draft {
        Some(t) => t.to_owned(),
        None => serde_json::to_string_pretty(&current.model).unwrap_or_default(),
    };
    let _ = write!(
        body,
        "<h2>Publish a new version</h2>
<p class=\"hint\">Add tables, columns (with a default for the rows that exist) and indexes; add choices; make a column optional; drop what no profile uses. A column keeps its kind. The server migrates its tables at once; devices follow at their next sync and keep their pending edits.</p>
<form class=\"editor\" method=\"post\" action=\"/console/model\">
<input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">
<div class=\"card\"><label for=\"model\">Data model (JSON)</label>
<textarea id=\"model\" name=\"model\" rows=\"24\" spellcheck=\"false\">{text}</textarea></div>
<p><button type=\"submit\">Publish version {next}</button></p>
</form>",
        csrf = esc(&admin.csrf),
        text = esc(&text),
        next = current.version + 1,
    );
    html_response(
        status,
        page(
            "Data model",
            Section::DataModel,
            &admin.name,
            &admin.csrf,
            &body,
        ),
    )
}

fn tables(model: &DataModel) -> String {
    let mut out = String::from(
        "<table class=\"grid model\"><thead><tr><th scope=\"col\">Table</th><th scope=\"col\">Columns</th><th scope=\"col\">Indexes</th></tr></thead><tbody>",
    );
    for t in &model.tables {
        let mut columns = Vec::new();
        for c in &t.columns {
            let mut s = format!(
                "<code>{}</code> {}",
                esc(&c.name),
                esc(&format!("{:?}", c.kind).to_lowercase())
            );
            if c.name == t.primary_key {
                s.push_str(" <span class=\"muted\">key</span>");
            }
            if let Some(choices) = &c.choices {
                let _ = write!(s, " ({})", esc(&choices.join(", ")));
            }
            if c.required {
                s.push_str(" <span class=\"muted\">required</span>");
            }
            if let Some(d) = &c.default {
                let _ = write!(
                    s,
                    " <span class=\"muted\">default {}</span>",
                    esc(&value_text(d))
                );
            }
            if let Some(r) = &c.references {
                let _ = write!(s, " → <code>{}</code>", esc(r));
            }
            columns.push(s);
        }
        let indexes: Vec<String> = t
            .indexes
            .iter()
            .map(|ix| {
                format!(
                    "<code>{}</code> ({})",
                    esc(&ix.name),
                    esc(&ix.columns.join(", "))
                )
            })
            .collect();
        let _ = write!(
            out,
            "<tr><th scope=\"row\"><code>{}</code></th><td>{}</td><td>{}</td></tr>",
            esc(&t.name),
            columns.join("<br>"),
            indexes.join("<br>")
        );
    }
    out.push_str("</tbody></table>");
    out
}

fn change_text(c: &ModelChange) -> String {
    match c {
        ModelChange::AddTable { table } => format!("added table {table}"),
        ModelChange::DropTable { table } => format!("dropped table {table}"),
        ModelChange::AddColumn { table, column } => format!("added {table}.{column}"),
        ModelChange::DropColumn { table, column } => format!("dropped {table}.{column}"),
        ModelChange::RelaxColumn { table, column } => format!("relaxed {table}.{column}"),
        ModelChange::AddIndex { table, index } => format!("added index {table}.{index}"),
        ModelChange::DropIndex { table, index } => format!("dropped index {table}.{index}"),
    }
}

fn history(versions: &[ModelVersion]) -> String {
    let mut out = String::from(
        "<h2>Versions</h2><table class=\"grid\"><thead><tr><th scope=\"col\">Version</th><th scope=\"col\">Published</th><th scope=\"col\">By</th><th scope=\"col\">Changes</th></tr></thead><tbody>",
    );
    for v in versions {
        let changes = if v.changes.is_empty() {
            "<span class=\"muted\">first version</span>".to_owned()
        } else {
            v.changes
                .iter()
                .map(|c| esc(&change_text(c)))
                .collect::<Vec<_>>()
                .join("<br>")
        };
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{changes}</td></tr>",
            v.version,
            esc(&v.published_at),
            esc(&v.source),
        );
    }
    out.push_str("</tbody></table>");
    out
}
