//! Console responses: HTML pages, the error page, and submitted forms.

use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::console::html;
use crate::error::ApiError;

/// An HTML response.
pub fn html_response(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

/// A server fault as a console page (the details go to the log).
pub fn error_page(e: &ApiError) -> Response {
    if e.status.is_server_error() {
        tracing::error!(code = e.code, message = %e.message, "console request failed");
    }
    html_response(
        e.status,
        html::bare_page(
            "Something went wrong",
            &maud::html! {
                (maud::PreEscaped(html::notice("error", &e.message)))
                p { a href="/console" { "Back to the console" } }
            }
            .into_string(),
        ),
    )
}

/// A submitted HTML form: its fields in order, repeated names kept.
#[derive(Debug, Clone, Default)]
pub struct Form(pub Vec<(String, String)>);

impl Form {
    /// The first value of a field.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    /// Every value of a field.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

impl<S: Send + Sync> FromRequest<S> for Form {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Response> {
        match axum::Form::<Vec<(String, String)>>::from_request(req, state).await {
            Ok(axum::Form(fields)) => Ok(Form(fields)),
            Err(e) => Err(html_response(
                StatusCode::BAD_REQUEST,
                html::bare_page(
                    "Bad form",
                    &html::notice("error", &format!("The form could not be read: {e}")),
                ),
            )),
        }
    }
}
