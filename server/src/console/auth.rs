//! Signing in to the admin web console: the admin token (the server's, or
//! an admin user's) is exchanged for a session whose id travels in an
//! HttpOnly, SameSite=Strict cookie scoped to `/console`, and `Secure` when
//! the browser reached the server over TLS (see [`secure_attribute`]). Sessions live in
//! the database, so any instance serving the same database accepts them.
//! Every state-changing form carries the session's anti-forgery token, and
//! cross-origin posts are refused outright. Device tokens (technicians,
//! dispatchers) never open a session.

use std::sync::Arc;

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{PreEscaped, html};

use crate::App;
use crate::api::blocking;
use crate::console::html::{bare_page, notice};
use crate::console::response::{Form, html_response};
use crate::db::{Role, hash_token};

/// Name of the session cookie.
pub const COOKIE: &str = "fieldsync_console";
/// How long a console session lasts (12 hours).
pub const SESSION_TTL_MS: i64 = 12 * 60 * 60 * 1000;

/// A signed-in administrator, extracted from the session cookie. Pages that
/// take it are unreachable without a session: a page request is sent to the
/// sign-in page, any other request is answered 401.
#[derive(Debug, Clone)]
pub struct Admin {
    /// Who signed in, for display and the record of retries.
    pub name: String,
    /// The session's anti-forgery token.
    pub csrf: String,
}

impl Admin {
    /// Refuses a form without this session's anti-forgery token (403).
    pub fn check_csrf(&self, form: &Form) -> Result<(), Box<Response>> {
        let sent = form.get("csrf").unwrap_or_default();
        if !sent.is_empty() && constant_time_eq(sent.as_bytes(), self.csrf.as_bytes()) {
            Ok(())
        } else {
            Err(Box::new(forbidden(
                "This form has expired or did not come from the console. Reload the page and try again.",
            )))
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn forbidden(message: &str) -> Response {
    html_response(
        StatusCode::FORBIDDEN,
        bare_page(
            "Request refused",
            &html! {
                (PreEscaped(notice("error", message)))
                p { a href="/console" { "Back to the console" } }
            }
            .into_string(),
        ),
    )
}

/// The session id in the request's cookies.
fn session_cookie(headers: &HeaderMap) -> Option<String> {
    for value in headers.get_all(header::COOKIE) {
        let Ok(text) = value.to_str() else { continue };
        for pair in text.split(';') {
            if let Some((_, v)) = pair
                .trim()
                .split_once('=')
                .filter(|(k, v)| *k == COOKIE && !v.is_empty() && v.len() <= 128)
            {
                return Some(v.to_owned());
            }
        }
    }
    None
}

/// True when the request comes from another origin (by its `Origin`
/// header, or `Sec-Fetch-Site` when the browser sends it).
fn cross_origin(headers: &HeaderMap) -> bool {
    if headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|site| site != "same-origin" && site != "none")
    {
        return true;
    }
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let origin_host = origin
        .split_once("://")
        .map(|(_, rest)| rest)
        .unwrap_or(origin);
    origin == "null" || origin_host != host
}

impl FromRequestParts<Arc<App>> for Admin {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, Response> {
        let not_signed_in = |method: &Method| {
            if method == Method::GET || method == Method::HEAD {
                Redirect::to("/console/login").into_response()
            } else {
                html_response(
                    StatusCode::UNAUTHORIZED,
                    bare_page(
                        "Sign in first",
                        &html! {
                            p {
                                "Your console session has ended. "
                                a href="/console/login" { "Sign in" }
                                " again."
                            }
                        }
                        .into_string(),
                    ),
                )
            }
        };
        let Some(id) = session_cookie(&parts.headers) else {
            return Err(not_signed_in(&parts.method));
        };
        if parts.method != Method::GET && cross_origin(&parts.headers) {
            return Err(forbidden("Cross-site requests to the console are refused."));
        }
        let db = app.db.clone();
        match blocking(move || db.console_session(&id)).await {
            Ok(Some(s)) => Ok(Admin {
                name: s.admin,
                csrf: s.csrf_token,
            }),
            Ok(None) => Err(not_signed_in(&parts.method)),
            Err(e) => Err(crate::console::response::error_page(&e)),
        }
    }
}

fn login_form(error: Option<&str>) -> String {
    html! {
        @if let Some(e) = error { (PreEscaped(notice("error", e))) }
        form.card.login method="post" action="/console/login" {
            label for="token" { "Admin token" }
            input #token name="token" type="password" autocomplete="current-password" required autofocus;
            p.hint { "The server's admin token, or the token of a user with the admin role. Technician and dispatcher tokens cannot sign in." }
            button.primary type="submit" { "Sign in" }
        }
    }
    .into_string()
}

/// `GET /console/login`: the sign-in form.
pub async fn login_page() -> Response {
    html_response(StatusCode::OK, bare_page("Sign in", &login_form(None)))
}

/// `"; Secure"` when the browser reached the server over TLS: the server
/// was told it sits behind a TLS-terminating proxy, or the proxy says so
/// with `X-Forwarded-Proto: https` (or `Forwarded: proto=https`). A client
/// that claims it falsely only keeps its own cookie off plain HTTP.
fn secure_attribute(app: &App, headers: &HeaderMap) -> &'static str {
    let says_https = |name: header::HeaderName, https: fn(&str) -> bool| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(https)
    };
    let forwarded_proto = says_https(header::HeaderName::from_static("x-forwarded-proto"), |v| {
        v.split(',')
            .next()
            .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"))
    });
    let forwarded = says_https(header::FORWARDED, |v| {
        v.split([';', ','])
            .filter_map(|pair| pair.trim().split_once('='))
            .any(|(k, v)| {
                k.trim().eq_ignore_ascii_case("proto")
                    && v.trim().trim_matches('"').eq_ignore_ascii_case("https")
            })
    });
    if app.behind_tls_proxy || forwarded_proto || forwarded {
        "; Secure"
    } else {
        ""
    }
}

/// `POST /console/login`: checks the admin token and opens a session.
pub async fn login(State(app): State<Arc<App>>, headers: HeaderMap, form: Form) -> Response {
    if cross_origin(&headers) {
        return forbidden("Cross-site sign-in is refused.");
    }
    let token = form.get("token").unwrap_or_default().trim().to_owned();
    let refuse = |status: StatusCode, message: &str| {
        html_response(status, bare_page("Sign in", &login_form(Some(message))))
    };
    if token.is_empty() || token.len() > 512 {
        return refuse(StatusCode::UNAUTHORIZED, "Enter an admin token.");
    }
    let admin = if constant_time_eq(
        hash_token(&token).as_bytes(),
        app.admin_token_hash.as_bytes(),
    ) {
        "admin token".to_owned()
    } else {
        let db = app.db.clone();
        match blocking(move || db.user_by_token(&token)).await {
            Ok(Some(u)) if u.role == Role::Admin => format!("user {}", u.id),
            Ok(Some(_)) => {
                return refuse(
                    StatusCode::FORBIDDEN,
                    "This token belongs to a technician or dispatcher; only admins can use the console.",
                );
            }
            Ok(None) => return refuse(StatusCode::UNAUTHORIZED, "That token is not valid."),
            Err(e) => return crate::console::response::error_page(&e),
        }
    };
    let db = app.db.clone();
    let name = admin.clone();
    let (id, _csrf) = match blocking(move || db.create_console_session(&name, SESSION_TTL_MS)).await
    {
        Ok(s) => s,
        Err(e) => return crate::console::response::error_page(&e),
    };
    let cookie = format!(
        "{COOKIE}={id}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={}{}",
        SESSION_TTL_MS / 1000,
        secure_attribute(&app, &headers)
    );
    let mut resp = Redirect::to("/console").into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

/// `POST /console/logout`: ends the session and clears the cookie.
pub async fn logout(
    State(app): State<Arc<App>>,
    admin: Admin,
    headers: HeaderMap,
    form: Form,
) -> Response {
    if let Err(r) = admin.check_csrf(&form) {
        return *r;
    }
    if let Some(id) = session_cookie(&headers) {
        let db = app.db.clone();
        if let Err(e) = blocking(move || db.delete_console_session(&id)).await {
            return crate::console::response::error_page(&e);
        }
    }
    let mut resp = html_response(
        StatusCode::OK,
        bare_page(
            "Signed out",
            &html! {
                p {
                    (admin.name) " signed out. "
                    a href="/console/login" { "Sign in again" }
                    "."
                }
            }
            .into_string(),
        ),
    );
    let cleared = format!(
        "{COOKIE}=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0{}",
        secure_attribute(&app, &headers)
    );
    if let Ok(v) = HeaderValue::from_str(&cleared) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}
