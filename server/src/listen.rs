//! The server's connection loop: accepts TCP connections and serves HTTP/1
//! on them with the limits that keep a slow or idle client from holding the
//! server's file descriptors.
//!
//! * A connection must deliver a request's complete headers within
//!   [`ConnectionLimits::header_read_timeout`], counted from the moment it
//!   is accepted or its previous response was sent: a connection that sends
//!   nothing, trickles its headers, or sits idle between keep-alive requests
//!   is closed when it runs out.
//! * At most [`ConnectionLimits::max_connections`] connections are open at
//!   once. The next one is accepted only when one closes; until then it
//!   waits in the kernel's listen queue, where it costs the process no file
//!   descriptor.
//! * An accept error (`EMFILE`, `ENFILE`, …) is logged and retried after a
//!   pause: it neither spins nor ends the server.
//!
//! Each request carries the peer's address as axum's
//! [`ConnectInfo<SocketAddr>`](axum::extract::ConnectInfo).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tower::ServiceExt;

/// Default of [`ConnectionLimits::header_read_timeout`].
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Default of [`ConnectionLimits::max_connections`]: well under the usual
/// open-file limit of 1024, which the database and the runtime share.
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;
/// Pause after an accept error that is not about the one connection.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(500);

/// How many connections the server holds and how long it waits for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Longest wait for a request's complete headers, from the connection's
    /// acceptance or the end of its previous response (so also the idle
    /// timeout of a keep-alive connection).
    pub header_read_timeout: Duration,
    /// Most connections open at once (at least 1).
    pub max_connections: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// Serves `app` on `listener` within `limits` until `shutdown` completes;
/// then stops accepting, lets requests in flight finish, closes idle
/// connections, and returns once every connection is closed.
pub async fn serve_connections(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let max = limits.max_connections.clamp(1, Semaphore::MAX_PERMITS);
    let slots = Arc::new(Semaphore::new(max));
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot,
            () = &mut shutdown => break,
        };
        // The semaphore is never closed.
        let Ok(slot) = slot else { break };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                let (app, stop) = (app.clone(), stop_rx.clone());
                tokio::spawn(async move {
                    serve_one(stream, peer, app, limits.header_read_timeout, stop).await;
                    drop(slot);
                });
            }
            Err(e) if connection_error(&e) => {}
            Err(e) => {
                tracing::error!(error = %e, "cannot accept a connection; retrying");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
            }
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    // Every connection gives its slot back when it closes.
    let _ = slots.acquire_many(max as u32).await;
    Ok(())
}

/// An error about the one connection being accepted (the next may work).
fn connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind as K;
    matches!(
        e.kind(),
        K::ConnectionRefused | K::ConnectionAborted | K::ConnectionReset
    )
}

async fn serve_one(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    header_read_timeout: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let mut request = request.map(Body::new);
        request.extensions_mut().insert(ConnectInfo(peer));
        let app = app.clone();
        async move { Ok::<_, Infallible>(app.oneshot(request).await.unwrap_or_else(|e| match e {})) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let mut stopping = false;
    loop {
        tokio::select! {
            served = connection.as_mut() => {
                if let Err(e) = served {
                    tracing::debug!(peer = %peer, error = %e, "connection ended");
                }
                return;
            }
            changed = stop.changed(), if !stopping => {
                stopping = true;
                if changed.is_ok() {
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    }
}
