//! The network seam. The engine talks to the server only through
//! [`Transport`], so tests and simulations can replace the network (cut a
//! connection, lose a response, call the server in-process) and the apps can
//! bring their own HTTP stack if they must. [`HttpTransport`] is the default,
//! on reqwest with rustls.

use std::time::Duration;

use async_trait::async_trait;

/// HTTP method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Put,
    Delete,
}

impl Method {
    /// The method's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
        }
    }
}

/// A request to the sync server. `path` includes the query string and is
/// relative to the server's base URL (it starts with `/`).
#[derive(Debug, Clone)]
pub struct HttpRequest {
    pub method: Method,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// A response from the sync server: any status, with its whole body as it
/// came off the wire. The engine asks for compressed answers
/// (`accept-encoding` in the request's headers) and decompresses them itself,
/// a pull page only as it writes it; a transport that decompressed the body
/// anyway reports no `content_encoding`.
#[derive(Debug, Clone, Default)]
pub struct HttpResponse {
    pub status: u16,
    /// The answer's `content-encoding` header, if any.
    pub content_encoding: Option<String>,
    pub body: Vec<u8>,
}

/// The request did not get an answer: connection refused or cut, timeout.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct TransportError(pub String);

/// Sends requests to the sync server.
#[async_trait]
pub trait Transport: Send + Sync {
    /// Sends one request and returns the server's answer, whatever its status.
    async fn send(&self, request: HttpRequest) -> Result<HttpResponse, TransportError>;
}

/// Timeouts of the default transport.
#[derive(Debug, Clone, Copy)]
pub struct HttpTimeouts {
    pub connect: Duration,
    pub request: Duration,
}

impl Default for HttpTimeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(10),
            request: Duration::from_secs(120),
        }
    }
}

/// The certificates an `https://` server may present to the default
/// transport, and from which authorities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsRoots {
    /// The operating system's verifier and trust store (with the
    /// certificates a device management profile installed). Not available
    /// on Android: its verifier must be initialised through JNI with the
    /// app's `Context`, which this library does not do.
    System,
    /// Mozilla's root certificates, compiled into the library
    /// (`webpki-root-certs`): the same on every device, with no system
    /// call. The default on Android.
    Bundled,
    /// Only the certificates of [`TlsTrust::extra_roots_pem`]: a server
    /// behind a private certificate authority, and nothing else.
    ExtraOnly,
}

impl Default for TlsRoots {
    /// [`TlsRoots::Bundled`] on Android, [`TlsRoots::System`] elsewhere.
    fn default() -> Self {
        if cfg!(target_os = "android") {
            TlsRoots::Bundled
        } else {
            TlsRoots::System
        }
    }
}

/// Which certificates the default transport trusts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsTrust {
    pub roots: TlsRoots,
    /// PEM certificates trusted besides `roots` (a company's own
    /// certificate authority), or the only ones with
    /// [`TlsRoots::ExtraOnly`].
    pub extra_roots_pem: Option<String>,
}

/// HTTP(S) transport on reqwest.
#[derive(Debug, Clone)]
pub struct HttpTransport {
    client: reqwest::Client,
    base_url: String,
}

impl HttpTransport {
    /// A transport to the server at `base_url` (for example `https://sync.example.com`).
    pub fn new(
        base_url: &str,
        timeouts: HttpTimeouts,
        tls: &TlsTrust,
    ) -> Result<Self, crate::Error> {
        let parsed = reqwest::Url::parse(base_url)
            .map_err(|e| crate::Error::InvalidInput(format!("server URL: {e}")))?;
        if parsed.scheme() != "http" && parsed.scheme() != "https" {
            return Err(crate::Error::InvalidInput(
                "server URL must start with http:// or https://".into(),
            ));
        }
        let builder = reqwest::Client::builder()
            .connect_timeout(timeouts.connect)
            .timeout(timeouts.request)
            // The engine decompresses answers itself (`codec`), a pull page
            // a block at a time as it is written.
            .gzip(false)
            .zstd(false);
        let client = trust(builder, tls)?
            .build()
            .map_err(|e| match &tls.extra_roots_pem {
                Some(_) => crate::Error::InvalidInput(format!("TLS extra roots: {e}")),
                None => crate::Error::Internal(format!("HTTP client: {e}")),
            })?;
        Ok(Self {
            client,
            base_url: base_url.trim_end_matches('/').to_owned(),
        })
    }
}

/// Sets the certificates `builder` trusts (see [`TlsTrust`]).
fn trust(
    builder: reqwest::ClientBuilder,
    tls: &TlsTrust,
) -> Result<reqwest::ClientBuilder, crate::Error> {
    let extra = match &tls.extra_roots_pem {
        None => Vec::new(),
        Some(pem) => {
            let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
                .map_err(|e| crate::Error::InvalidInput(format!("TLS extra roots: {e}")))?;
            if certs.is_empty() {
                return Err(crate::Error::InvalidInput(
                    "TLS extra roots: no PEM certificate (-----BEGIN CERTIFICATE-----) found"
                        .into(),
                ));
            }
            certs
        }
    };
    match tls.roots {
        TlsRoots::System if cfg!(target_os = "android") => Err(crate::Error::InvalidInput(
            "TLS roots: the Android system verifier needs JNI initialisation, which this library \
             does not do; use the bundled roots (the default on Android), with extra roots for a \
             private certificate authority"
                .into(),
        )),
        TlsRoots::System if extra.is_empty() => Ok(builder),
        TlsRoots::System => Ok(builder.tls_certs_merge(extra)),
        TlsRoots::Bundled => {
            let mut roots = webpki_root_certs::TLS_SERVER_ROOT_CERTS
                .iter()
                .map(|der| reqwest::Certificate::from_der(der.as_ref()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| crate::Error::Internal(format!("bundled TLS roots: {e}")))?;
            roots.extend(extra);
            Ok(builder.tls_certs_only(roots))
        }
        TlsRoots::ExtraOnly if extra.is_empty() => Err(crate::Error::InvalidInput(
            "TLS roots: ExtraOnly needs extra_roots_pem".into(),
        )),
        TlsRoots::ExtraOnly => Ok(builder.tls_certs_only(extra)),
    }
}

#[async_trait]
impl Transport for HttpTransport {
    async fn send(&self, request: HttpRequest) -> Result<HttpResponse, TransportError> {
        let url = format!("{}{}", self.base_url, request.path);
        let method = match request.method {
            Method::Get => reqwest::Method::GET,
            Method::Post => reqwest::Method::POST,
            Method::Put => reqwest::Method::PUT,
            Method::Delete => reqwest::Method::DELETE,
        };
        let mut builder = self.client.request(method, url);
        for (k, v) in &request.headers {
            builder = builder.header(k, v);
        }
        if !request.body.is_empty() {
            builder = builder
                .header("content-type", "application/json")
                .body(request.body);
        }
        let mut response = builder
            .send()
            .await
            .map_err(|e| TransportError(describe(&e)))?;
        let status = response.status().as_u16();
        let content_encoding = response
            .headers()
            .get(reqwest::header::CONTENT_ENCODING)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        // Read straight into the one buffer the answer is kept in: collecting
        // it whole first and copying it out held a pull page (megabytes of
        // JSON) two or three times over for a moment.
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| TransportError(describe(&e)))?
        {
            body.extend_from_slice(&chunk);
        }
        Ok(HttpResponse {
            status,
            content_encoding,
            body,
        })
    }
}

fn describe(e: &reqwest::Error) -> String {
    let causes = || std::iter::successors(std::error::Error::source(e), |s| s.source());
    if e.is_timeout() {
        "the server did not answer in time".into()
    } else if e.is_connect() {
        // The innermost cause says why: refused, unreachable, or a
        // certificate this device does not trust (a captive portal, or a
        // server behind a private authority without `TlsTrust`).
        match causes().last() {
            Some(c) => format!("could not connect to the server: {c}"),
            None => "could not connect to the server".into(),
        }
    } else {
        let mut msg = e.to_string();
        for cause in causes() {
            msg.push_str(": ");
            msg.push_str(&cause.to_string());
        }
        msg
    }
}
