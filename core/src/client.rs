//! The sync server's API as the device uses it: builds requests, sends them
//! through the injected [`Transport`], and turns every answer into a typed
//! result. A body that does not decode is a [`Error::Protocol`], never a panic
//! and never a partial apply.

use std::sync::Arc;

use serde::de::DeserializeOwned;

use crate::codec::{ACCEPT_ENCODING, Body, Encoding};
use crate::error::{Error, Result};
use crate::profile::SyncProfile;
use crate::protocol::{
    DEVICE_HEADER, ErrorResponse, FetchRequest, FetchResponse, Mutation, PROTOCOL_HEADER,
    PROTOCOL_VERSION, PushRequest, PushResponse, RecordList, RecordResponse,
};
use crate::transport::{HttpRequest, Method, Transport};

/// Gives the engine the user's bearer token (C18): asked when the engine
/// opens without a token, and again when the server answers 401, after
/// which the refused request is sent once more with the new token. The app
/// keeps its tokens (a platform key store, an OAuth library); the engine
/// keeps the current one in memory only, never in the database or the log.
pub trait TokenProvider: Send + Sync {
    /// The user's current token. `refused` is true when the server has just
    /// refused the engine's token (fetch a fresh one), false at open. An
    /// error fails the call that needed the token.
    fn token(&self, refused: bool) -> Result<String>;
}

/// Credentials and identity the device presents.
#[derive(Clone)]
pub struct Credentials {
    /// Bearer token of the user.
    pub token: String,
    /// Stable id of this device (generated at first open).
    pub device_id: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("token", &"<redacted>")
            .field("device_id", &self.device_id)
            .finish()
    }
}

/// The token in force, shared by every clone of the client, and where a new
/// one comes from.
struct TokenState {
    current: std::sync::RwLock<String>,
    provider: Option<Arc<dyn TokenProvider>>,
    /// Held while the provider is asked, so requests refused together ask
    /// it once.
    renewing: tokio::sync::Mutex<()>,
}

/// A decoded answer and the bytes it took on the wire.
pub struct Sized<T> {
    pub value: T,
    pub bytes_up: u64,
    pub bytes_down: u64,
}

/// A pull page as it came off the wire: its head decoded, enough to ask for
/// the next page, and its body kept as it arrived (compressed, as a rule).
/// The thread that applies it decompresses it a block at a time and decodes
/// the rows one at a time as it writes them (`Store::apply_page_json`), so a
/// page is never held decoded, nor its JSON whole.
pub struct PulledPage {
    pub head: PageHead,
    body: Body,
}

/// The fields of a pull page that drive the download.
#[derive(Debug, Clone)]
pub struct PageHead {
    pub table: String,
    pub cursor: String,
    pub has_more: bool,
}

impl PulledPage {
    /// The page's body (a `PullPage`, as JSON, maybe compressed).
    pub fn body(&self) -> &Body {
        &self.body
    }
}

/// Reads a pull page's head from its body. The reference server writes
/// `table`, `cursor` and `has_more` before the rows, so reading stops at the
/// first other field once they are in: only the start of a compressed page is
/// decompressed. In any other order the rest is skipped through until they
/// are found.
fn read_head(body: &Body) -> Result<PageHead> {
    let mut head = None;
    let outcome = {
        let mut de = serde_json::Deserializer::from_reader(body.reader()?);
        serde::de::DeserializeSeed::deserialize(HeadSeed { head: &mut head }, &mut de)
    };
    match (head, outcome) {
        (Some(head), _) => Ok(head),
        (None, Err(e)) => Err(Error::Protocol(format!(
            "the server's answer does not decode: {e}"
        ))),
        (None, Ok(())) => Err(Error::Protocol(
            "the server's answer does not decode: no page head".into(),
        )),
    }
}

/// The marker error that stops reading once the head is in.
const HEAD_READ: &str = "page head read";

struct HeadSeed<'a> {
    head: &'a mut Option<PageHead>,
}

#[derive(serde::Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum HeadField {
    Table,
    Cursor,
    HasMore,
    #[serde(other)]
    Other,
}

impl<'de> serde::de::DeserializeSeed<'de> for HeadSeed<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for HeadSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a pull page")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<(), A::Error> {
        use serde::de::Error as _;
        let (mut table, mut cursor, mut has_more) = (None, None, None);
        while let Some(field) = map.next_key::<HeadField>()? {
            match field {
                HeadField::Table => table = Some(map.next_value::<String>()?),
                HeadField::Cursor => cursor = Some(map.next_value::<String>()?),
                HeadField::HasMore => has_more = Some(map.next_value::<bool>()?),
                HeadField::Other => {
                    if table.is_some() && cursor.is_some() && has_more.is_some() {
                        break;
                    }
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        let head = PageHead {
            table: table.ok_or_else(|| A::Error::missing_field("table"))?,
            cursor: cursor.ok_or_else(|| A::Error::missing_field("cursor"))?,
            has_more: has_more.ok_or_else(|| A::Error::missing_field("has_more"))?,
        };
        *self.head = Some(head);
        // Stop here: the rest of the page is read when it is written.
        Err(A::Error::custom(HEAD_READ))
    }
}

fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T> {
    serde_json::from_slice(body)
        .map_err(|e| Error::Protocol(format!("the server's answer does not decode: {e}")))
}

/// Client of the sync server.
#[derive(Clone)]
pub struct ServerApi {
    transport: Arc<dyn Transport>,
    device_id: String,
    token: Arc<TokenState>,
}

/// Percent-encodes a query or path component.
pub fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl ServerApi {
    /// A client presenting `credentials`, without a token provider.
    pub fn new(transport: Arc<dyn Transport>, credentials: Credentials) -> Self {
        Self::with_provider(transport, credentials, None)
    }

    /// A client presenting `credentials`; on a 401 it asks `provider` for a
    /// new token and sends the request once more.
    pub fn with_provider(
        transport: Arc<dyn Transport>,
        credentials: Credentials,
        provider: Option<Arc<dyn TokenProvider>>,
    ) -> Self {
        Self {
            transport,
            device_id: credentials.device_id,
            token: Arc::new(TokenState {
                current: std::sync::RwLock::new(credentials.token),
                provider,
                renewing: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// Replaces the token for every later request.
    pub fn set_token(&self, token: &str) -> Result<()> {
        if token.trim().is_empty() {
            return Err(Error::InvalidInput("a token is required".into()));
        }
        *self
            .token
            .current
            .write()
            .unwrap_or_else(|p| p.into_inner()) = token.to_owned();
        Ok(())
    }

    fn current_token(&self) -> String {
        self.token
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// After the server refused `refused`: a token to try again with, from
    /// the provider unless another request already renewed it; `None`
    /// without a provider.
    async fn renew_token(&self, refused: &str) -> Result<Option<String>> {
        let Some(provider) = self.token.provider.clone() else {
            return Ok(None);
        };
        let _renewing = self.token.renewing.lock().await;
        let current = self.current_token();
        if current != refused {
            return Ok(Some(current));
        }
        let fresh = tokio::task::spawn_blocking(move || provider.token(true))
            .await
            .map_err(|e| Error::Internal(format!("the token provider ended abnormally: {e}")))??;
        self.set_token(&fresh)?;
        Ok(Some(fresh))
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: String,
        body: Vec<u8>,
    ) -> Result<Sized<T>> {
        let raw = self.call_raw(method, path, body).await?;
        Ok(Sized {
            value: decode(&raw.value.decoded()?)?,
            bytes_up: raw.bytes_up,
            bytes_down: raw.bytes_down,
        })
    }

    fn request(&self, method: Method, path: String, body: Vec<u8>, token: &str) -> HttpRequest {
        HttpRequest {
            method,
            path,
            headers: vec![
                ("authorization".into(), format!("Bearer {token}")),
                (DEVICE_HEADER.into(), self.device_id.clone()),
                (PROTOCOL_HEADER.into(), PROTOCOL_VERSION.to_string()),
                ("accept-encoding".into(), ACCEPT_ENCODING.into()),
            ],
            body,
        }
    }

    /// Sends a request; the body of a 2xx answer as it came off the wire.
    /// A 401 asks the token provider for a new token and sends the request
    /// once more with it.
    async fn call_raw(&self, method: Method, path: String, body: Vec<u8>) -> Result<Sized<Body>> {
        let bytes_up = (body.len() + path.len()) as u64;
        let token = self.current_token();
        // Kept for the one retry only when a provider can give a new token.
        let again = self
            .token
            .provider
            .is_some()
            .then(|| (path.clone(), body.clone()));
        let mut response = self
            .transport
            .send(self.request(method, path, body, &token))
            .await
            .map_err(|e| Error::NetworkUnavailable(e.0))?;
        if response.status == 401
            && let Some((path, body)) = again
            && let Some(fresh) = self.renew_token(&token).await?
        {
            response = self
                .transport
                .send(self.request(method, path, body, &fresh))
                .await
                .map_err(|e| Error::NetworkUnavailable(e.0))?;
        }
        let bytes_down = response.body.len() as u64;
        let encoding = Encoding::from_header(response.content_encoding.as_deref());
        if !(200..300).contains(&response.status) {
            // An error's body is read as well as it can be: the status
            // decides the error's kind.
            let body = match encoding {
                Ok(encoding) => Body {
                    bytes: response.body,
                    encoding,
                }
                .decoded()
                .unwrap_or_default(),
                Err(_) => response.body,
            };
            return Err(error_from_response(response.status, &body));
        }
        Ok(Sized {
            value: Body {
                bytes: response.body,
                encoding: encoding?,
            },
            bytes_up,
            bytes_down,
        })
    }

    /// The offline profile issued to this user.
    pub async fn profile(&self) -> Result<Sized<SyncProfile>> {
        self.call(Method::Get, "/v1/profile".into(), Vec::new())
            .await
    }

    /// One page of changes of `table` after `cursor`.
    pub async fn pull(
        &self,
        table: &str,
        cursor: &str,
        limit: u32,
        want_total: bool,
        profile_version: i64,
    ) -> Result<Sized<PulledPage>> {
        let path = format!(
            "/v1/sync/pull?table={}&cursor={}&limit={limit}&total={want_total}&profile_version={profile_version}",
            encode_component(table),
            encode_component(cursor)
        );
        let raw = self.call_raw(Method::Get, path, Vec::new()).await?;
        let head = read_head(&raw.value)?;
        if head.table != table {
            return Err(Error::Protocol(format!(
                "asked for table '{table}', got '{}'",
                head.table
            )));
        }
        Ok(Sized {
            value: PulledPage {
                head,
                body: raw.value,
            },
            bytes_up: raw.bytes_up,
            bytes_down: raw.bytes_down,
        })
    }

    /// Rows of `table` whose `column` holds one of `values` and that the
    /// profile selects (related rows that arrived without changing).
    pub async fn fetch(&self, request: &FetchRequest) -> Result<Sized<FetchResponse>> {
        let body = serde_json::to_vec(request)?;
        let response: Sized<FetchResponse> = self
            .call(Method::Post, "/v1/sync/fetch".into(), body)
            .await?;
        if response.value.table != request.table {
            return Err(Error::Protocol(format!(
                "asked for table '{}', got '{}'",
                request.table, response.value.table
            )));
        }
        Ok(response)
    }

    /// Uploads mutations; results come back in the same order.
    pub async fn push(&self, mutations: Vec<Mutation>) -> Result<Sized<PushResponse>> {
        let keys: Vec<String> = mutations
            .iter()
            .map(|m| m.idempotency_key.clone())
            .collect();
        let body = serde_json::to_vec(&PushRequest { mutations })?;
        let response: Sized<PushResponse> = self
            .call(Method::Post, "/v1/sync/push".into(), body)
            .await?;
        let got: Vec<&str> = response
            .value
            .results
            .iter()
            .map(|r| r.idempotency_key.as_str())
            .collect();
        if got != keys.iter().map(String::as_str).collect::<Vec<_>>() {
            return Err(Error::Protocol(
                "push results do not match the mutations sent".into(),
            ));
        }
        Ok(response)
    }

    /// Reads one live row from the server (online mode).
    pub async fn record(&self, table: &str, id: &str) -> Result<Sized<RecordResponse>> {
        let path = format!(
            "/v1/records/{}/{}",
            encode_component(table),
            encode_component(id)
        );
        self.call(Method::Get, path, Vec::new()).await
    }

    /// Lists live rows from the server (online mode).
    pub async fn records(
        &self,
        table: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Sized<RecordList>> {
        let mut path = format!("/v1/records/{}?limit={limit}", encode_component(table));
        if let Some(after) = after {
            path.push_str(&format!("&after={}", encode_component(after)));
        }
        self.call(Method::Get, path, Vec::new()).await
    }
}

impl ServerApi {
    /// The network check's probe: `GET /v1/health`.
    pub async fn health(&self) -> Result<()> {
        let _: Sized<serde_json::Value> = self
            .call(Method::Get, "/v1/health".into(), Vec::new())
            .await?;
        Ok(())
    }

    /// Smart sync: which of these tables changed on the server after their
    /// cursors (`POST /v1/sync/changes`).
    pub async fn changes(
        &self,
        request: &crate::protocol::ChangesRequest,
    ) -> Result<Sized<crate::protocol::ChangesResponse>> {
        let body = serde_json::to_vec(request)?;
        self.call(Method::Post, "/v1/sync/changes".into(), body)
            .await
    }

    /// The exact number of entries a pull of each table from its cursor
    /// sends (`POST /v1/sync/counts`): the totals of a sync's progress.
    pub async fn counts(
        &self,
        request: &crate::protocol::CountsRequest,
    ) -> Result<Sized<crate::protocol::CountsResponse>> {
        let body = serde_json::to_vec(request)?;
        self.call(Method::Post, "/v1/sync/counts".into(), body)
            .await
    }

    /// Uploads a batch of telemetry events (`POST /v1/telemetry`).
    pub async fn upload_telemetry(
        &self,
        batch: &crate::telemetry::TelemetryBatch,
    ) -> Result<Sized<crate::telemetry::TelemetryAccepted>> {
        let body = serde_json::to_vec(batch)?;
        self.call(Method::Post, "/v1/telemetry".into(), body).await
    }

    /// Lists live rows matching equality filters (online mode): `where` is a
    /// JSON object of column to value.
    pub async fn records_where(
        &self,
        table: &str,
        filter: &std::collections::BTreeMap<String, crate::value::Value>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Sized<RecordList>> {
        let mut path = format!("/v1/records/{}?limit={limit}", encode_component(table));
        if !filter.is_empty() {
            let json = serde_json::to_string(filter)?;
            path.push_str(&format!("&where={}", encode_component(&json)));
        }
        if let Some(after) = after {
            path.push_str(&format!("&after={}", encode_component(after)));
        }
        self.call(Method::Get, path, Vec::new()).await
    }
}

/// Turns a non-2xx answer into a typed error.
pub fn error_from_response(status: u16, body: &[u8]) -> Error {
    let parsed = serde_json::from_slice::<ErrorResponse>(body).ok();
    let (code, message) = match parsed {
        Some(r) => (r.error.code, r.error.message),
        None => (
            "unknown".to_owned(),
            String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
        ),
    };
    match status {
        401 => Error::Unauthorized,
        502..=504 => Error::NetworkUnavailable(format!("the service answered {status}")),
        _ => Error::Server {
            status,
            code,
            message,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zstd(json: &str) -> Body {
        Body {
            bytes: zstd::encode_all(json.as_bytes(), 1).expect("zstd"),
            encoding: Encoding::Zstd,
        }
    }

    #[test]
    fn the_head_is_read_from_the_start_of_a_compressed_page() {
        // The reference server's order; what follows the head is never read,
        // so it may even be broken.
        let head = read_head(&zstd(
            r#"{"table":"jobs","profile_version":1,"cursor":"c7","has_more":true,"total":3,"columns":["_version","id"],"rows":[[1,"a"],"#,
        ))
        .expect("head");
        assert_eq!(
            (head.table.as_str(), head.cursor.as_str(), head.has_more),
            ("jobs", "c7", true)
        );
    }

    #[test]
    fn the_head_is_found_in_any_order_and_a_missing_field_is_a_protocol_error() {
        let rows_first = r#"{"rows":[[1,"a"]],"removed":[],"columns":["_version","id"],"has_more":false,"cursor":"c8","table":"jobs"}"#;
        for body in [
            Body::plain(rows_first.as_bytes().to_vec()),
            zstd(rows_first),
        ] {
            let head = read_head(&body).expect("head");
            assert_eq!((head.cursor.as_str(), head.has_more), ("c8", false));
        }
        for broken in [
            r#"{"table":"jobs","cursor":"c9","rows":[]}"#,
            r#"{"table":"jobs","cursor":"c9","has_more":"yes"}"#,
            r#"[1,2]"#,
            "",
        ] {
            match read_head(&zstd(broken)) {
                Err(Error::Protocol(_)) => {}
                other => panic!(
                    "{broken}: expected a protocol error, got {:?}",
                    other.map(|h| h.cursor)
                ),
            }
        }
    }
}
