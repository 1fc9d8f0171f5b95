//! HTML building blocks of the admin web console: the page layout with its
//! navigation, key/value tables, times, and the readable form of field
//! values. Every console page is a maud template (`html!`), checked at
//! compile time and escaping every value unless it is marked `PreEscaped`,
//! which is used only on the output of another template. [`esc`] remains
//! for HTML written as text outside a template (there should be none).
//! Pages are plain server-rendered HTML with one stylesheet and one small
//! script, both served by the server itself.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use fieldsync_protocol::Value;
use maud::{DOCTYPE, Markup, PreEscaped, html};

/// Escapes text for HTML element content and quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Escapes a query-string component.
pub fn url_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

/// The console's sections, in navigation order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    DataModel,
    Profiles,
    Settings,
    SyncErrors,
    Devices,
    Telemetry,
}

impl Section {
    pub const ALL: [Section; 6] = [
        Section::DataModel,
        Section::Profiles,
        Section::Settings,
        Section::SyncErrors,
        Section::Devices,
        Section::Telemetry,
    ];
    fn title(self) -> &'static str {
        match self {
            Section::DataModel => "Data model",
            Section::Profiles => "Offline profiles",
            Section::Settings => "Settings",
            Section::SyncErrors => "Sync Errors",
            Section::Devices => "Devices",
            Section::Telemetry => "Telemetry",
        }
    }
    fn href(self) -> &'static str {
        match self {
            Section::DataModel => "/console/model",
            Section::Profiles => "/console/profiles",
            Section::Settings => "/console/settings",
            Section::SyncErrors => "/console/sync-errors",
            Section::Devices => "/console/devices",
            Section::Telemetry => "/console/telemetry",
        }
    }
}

/// A page's `<head>`: its title, the stylesheet and, on signed-in pages,
/// the console's script.
fn head(title: &str, script: bool) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · fieldsync console" }
            link rel="stylesheet" href="/console/assets/console.css";
            @if script {
                script src="/console/assets/console.js" defer {}
            }
        }
    }
}

/// A whole console page: header, navigation, sign-out form and `body`
/// (HTML the page module built).
pub fn page(title: &str, section: Section, admin: &str, csrf: &str, body: &str) -> String {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title, true))
            body {
                header.top {
                    a.brand href="/console" { "fieldsync " span { "admin console" } }
                    nav {
                        @for s in Section::ALL {
                            @if s == section {
                                a href=(s.href()) aria-current="page" class="current" { (s.title()) }
                            } @else {
                                a href=(s.href()) { (s.title()) }
                            }
                        }
                    }
                    form.signout method="post" action="/console/logout" {
                        input type="hidden" name="csrf" value=(csrf);
                        span.who { (admin) }
                        " "
                        button.link type="submit" { "Sign out" }
                    }
                }
                main {
                    h1 { (title) }
                    (PreEscaped(body))
                }
            }
        }
    }
    .into_string()
}

/// A page outside the signed-in layout (sign-in, errors).
pub fn bare_page(title: &str, body: &str) -> String {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title, false))
            body.bare {
                main.narrow {
                    p.brand { "fieldsync " span { "admin console" } }
                    h1 { (title) }
                    (PreEscaped(body))
                }
            }
        }
    }
    .into_string()
}

/// A stored UTC time (`YYYY-MM-DDTHH:MM:SSZ`) as a `<time>` element: the
/// console's script shows it in the browser's time zone and language
/// (`7 Dec 2026, 21:51`), with the UTC time as its tooltip; without the
/// script it reads `2026-12-07 20:51 UTC`.
pub fn time(utc: &str) -> String {
    let plain = match (utc.get(..10), utc.get(11..16)) {
        (Some(date), Some(hm)) if utc.len() == 20 && utc.ends_with('Z') => {
            format!("{date} {hm} UTC")
        }
        _ => utc.to_owned(),
    };
    html! { time.local datetime=(utc) title=(plain) { (plain) } }.into_string()
}

/// A notice box; `kind` is `ok` or `error`.
pub fn notice(kind: &str, text: &str) -> String {
    let role = if kind == "error" { "alert" } else { "status" };
    html! { div class={ "notice " (kind) } role=(role) { (text) } }.into_string()
}

/// The readable form of a field value (text as is, null as an em dash).
pub fn value_text(v: &Value) -> String {
    match v {
        Value::Null => "—".to_owned(),
        Value::Integer(i) => i.to_string(),
        Value::Real(f) => f.to_string(),
        Value::Text(s) => s.clone(),
        Value::Boolean(true) => "yes".to_owned(),
        Value::Boolean(false) => "no".to_owned(),
    }
}

/// The readable form of a JSON value: scalars as text, objects and arrays
/// as `key: value` phrases.
pub fn json_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "—".to_owned(),
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Bool(b) => if *b { "yes" } else { "no" }.to_owned(),
        serde_json::Value::Number(n) => n.to_string(),
        serde_json::Value::Array(items) => {
            items.iter().map(json_text).collect::<Vec<_>>().join(", ")
        }
        serde_json::Value::Object(map) => map
            .iter()
            .map(|(k, v)| format!("{}: {}", k.replace('_', " "), json_text(v)))
            .collect::<Vec<_>>()
            .join("; "),
    }
}

/// A two-column table of labels and (already built HTML) cells.
pub fn kv_table(class: &str, rows: &[(&str, String)]) -> String {
    html! {
        table class={ "kv " (class) } {
            tbody {
                @for (k, v) in rows {
                    tr { th scope="row" { (k) } td { (PreEscaped(v)) } }
                }
            }
        }
    }
    .into_string()
}

/// Device data and server data side by side: one row per field, the
/// fields that differ marked.
pub fn side_by_side(
    device: Option<&BTreeMap<String, Value>>,
    server: Option<&BTreeMap<String, Value>>,
    device_label: &str,
) -> String {
    let keys: BTreeSet<&String> = device
        .into_iter()
        .flat_map(|m| m.keys())
        .chain(server.into_iter().flat_map(|m| m.keys()))
        .collect();
    let cell = |side: Option<Option<&Value>>, none: &str| -> Markup {
        match side {
            None => html! { span.muted { (none) } },
            Some(None) => html! { span.muted { "not sent" } },
            Some(Some(v)) => html! { (value_text(v)) },
        }
    };
    html! {
        table.compare {
            thead { tr { th scope="col" { "Field" } th scope="col" { "Device data" } th scope="col" { "Server data" } } }
            tbody {
                @if keys.is_empty() {
                    tr { td colspan="3" class="muted" { (device_label) } }
                }
                @for k in keys {
                    @let d = device.map(|m| m.get(k));
                    @let s = server.map(|m| m.get(k));
                    @let differs = matches!((d, s), (Some(Some(a)), Some(Some(b))) if a != b);
                    tr class=[differs.then_some("differs")] {
                        th scope="row" { (k) }
                        td { (cell(d, device_label)) }
                        td { (cell(s, "no server row")) }
                    }
                }
            }
        }
    }
    .into_string()
}

/// `<option>` elements of a filter select; the empty value means "any".
pub fn options(values: &[String], selected: Option<&str>, any_label: &str) -> String {
    html! {
        option value="" { (any_label) }
        @for v in values {
            option value=(v) selected[Some(v.as_str()) == selected] { (v) }
        }
    }
    .into_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            esc("<script>alert('x') & \"y\"</script>"),
            "&lt;script&gt;alert(&#39;x&#39;) &amp; &quot;y&quot;&lt;/script&gt;"
        );
    }

    #[test]
    fn side_by_side_marks_differences_and_escapes() {
        let mut d = BTreeMap::new();
        d.insert("status".to_owned(), Value::Text("<b>done</b>".into()));
        d.insert("notes".to_owned(), Value::Text("same".into()));
        let mut s = BTreeMap::new();
        s.insert("status".to_owned(), Value::Text("open".into()));
        s.insert("notes".to_owned(), Value::Text("same".into()));
        let html = side_by_side(Some(&d), Some(&s), "deleted on the device");
        assert!(html.contains("&lt;b&gt;done&lt;/b&gt;"));
        assert!(!html.contains("<b>done"));
        assert_eq!(html.matches("class=\"differs\"").count(), 1);
    }

    #[test]
    fn json_text_reads_objects_as_phrases() {
        let v = serde_json::json!({"kind": "owned", "column": "resource_id"});
        assert_eq!(json_text(&v), "column: resource_id; kind: owned");
    }
}
