//! The process's logs and traces: log lines on stderr (text, coloured only
//! on a terminal, or one JSON object a line), and OpenTelemetry traces
//! exported over OTLP/HTTP (protobuf) when the standard `OTEL_*`
//! environment variables ask for them.
//!
//! Trace export is on when `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set, unless `OTEL_SDK_DISABLED=true`
//! or `OTEL_TRACES_EXPORTER=none`. The exporter itself reads the rest:
//! `OTEL_EXPORTER_OTLP_*_HEADERS`, `_TIMEOUT`, `OTEL_SERVICE_NAME`
//! (default `fieldsync-server`), `OTEL_RESOURCE_ATTRIBUTES` and the batch
//! processor's `OTEL_BSP_*`. Each request is a server span (see
//! [`metrics::track`]) that continues the caller's W3C
//! `traceparent`; spans are exported whatever `FIELDSYNC_LOG` says.

use std::io::IsTerminal;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Longest one export request may take (the OTLP default).
const EXPORT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How log lines are written on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines, coloured only when stderr is a terminal.
    #[default]
    Text,
    /// One JSON object a line (timestamp, level, target, fields, spans).
    Json,
}

/// Why tracing could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    #[error(
        "OTEL_EXPORTER_OTLP_PROTOCOL '{0}' is not supported: this server exports OTLP over HTTP with protobuf (http/protobuf)"
    )]
    Protocol(String),
    #[error("cannot set up the OTLP trace exporter: {0}")]
    Exporter(String),
}

/// Keeps trace export running; flushes the spans still buffered when
/// dropped (or on [`Tracing::shutdown`]).
#[must_use = "dropping the guard stops trace export"]
pub struct Tracing {
    provider: Option<SdkTracerProvider>,
}

impl Tracing {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports the buffered spans and stops export.
    pub fn shutdown(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("fieldsync: trace export did not finish: {e}");
        }
    }
}

impl Drop for Tracing {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// Whether the environment asks for trace export.
pub fn export_requested() -> bool {
    let disabled = env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
        || env("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"));
    !disabled
        && (env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some()
            || env("OTEL_EXPORTER_OTLP_ENDPOINT").is_some())
}

/// Installs the process's subscriber: log lines on stderr filtered by
/// `filter` (an `EnvFilter` directive such as `warn` or
/// `fieldsync_server=info`), and, when `traces` is set, trace export if the
/// environment asks for it. Must be called inside a tokio runtime when
/// export is on (the exporter's requests run on it). Installing twice keeps
/// the first.
pub fn init(filter: &str, format: LogFormat, traces: bool) -> Result<Tracing, ObserveError> {
    let env_filter = || {
        tracing_subscriber::EnvFilter::try_new(filter)
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"))
    };
    let ansi = std::io::stderr().is_terminal();
    let logs = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(ansi)
            .with_filter(env_filter())
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_filter(env_filter())
            .boxed(),
    };
    let provider = if traces && export_requested() {
        Some(provider()?)
    } else {
        None
    };
    let traces = provider.as_ref().map(|p| {
        let tracer = p.tracer("fieldsync-server");
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_filter(tracing_subscriber::filter::Targets::new().with_targets([
                ("fieldsync_server", tracing::Level::INFO),
                ("fieldsync", tracing::Level::INFO),
            ]))
    });
    let _ = tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .try_init();
    Ok(Tracing { provider })
}

fn provider() -> Result<SdkTracerProvider, ObserveError> {
    let protocol =
        env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"));
    if let Some(p) = protocol.filter(|p| p != "http/protobuf") {
        return Err(ObserveError::Protocol(p));
    }
    let handle = tokio::runtime::Handle::try_current()
        .map_err(|_| ObserveError::Exporter("no async runtime to send spans from".into()))?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_http_client(OtlpClient {
            client: reqwest::Client::builder()
                .timeout(EXPORT_TIMEOUT)
                .build()
                .map_err(|e| ObserveError::Exporter(e.to_string()))?,
            handle,
        })
        .build()
        .map_err(|e| ObserveError::Exporter(e.to_string()))?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if env("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name("fieldsync-server");
    }
    Ok(SdkTracerProvider::builder()
        .with_resource(resource.build())
        .with_batch_exporter(exporter)
        .build())
}

/// Sets `span`'s parent to the trace a request's `traceparent` header
/// names, if any (W3C Trace Context).
pub fn continue_trace(span: &tracing::Span, headers: &axum::http::HeaderMap) {
    if headers.get("traceparent").is_none() {
        return;
    }
    let cx = TraceContextPropagator::new().extract(&opentelemetry_http::HeaderExtractor(headers));
    let _ = span.set_parent(cx);
}

/// The exporter's HTTP client: the server's own reqwest client, its
/// requests run on the server's runtime (the batch processor exports from
/// a thread of its own, outside any runtime).
#[derive(Debug)]
struct OtlpClient {
    client: reqwest::Client,
    handle: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for OtlpClient {
    async fn send_bytes(
        &self,
        request: opentelemetry_http::Request<opentelemetry_http::Bytes>,
    ) -> Result<
        opentelemetry_http::Response<opentelemetry_http::Bytes>,
        opentelemetry_http::HttpError,
    > {
        let client = self.client.clone();
        let (parts, body) = request.into_parts();
        let sent = self.handle.spawn(async move {
            let mut builder = client
                .request(parts.method, parts.uri.to_string())
                .body(body);
            for (name, value) in &parts.headers {
                builder = builder.header(name, value);
            }
            let response = builder.send().await?;
            let status = response.status();
            let headers = response.headers().clone();
            let bytes = response.bytes().await?;
            Ok::<_, reqwest::Error>((status, headers, bytes))
        });
        let (status, headers, bytes) = sent.await??;
        let mut response = opentelemetry_http::Response::new(bytes);
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        Ok(response)
    }
}
