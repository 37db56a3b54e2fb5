//! Building and running the gRPC server.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Stream, StreamExt};

use stagetime_core::Error;
use stagetime_core::backend::Capabilities;
use stagetime_core::logs::LogSource;
use stagetime_core::store::Store;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::{Connected, TcpIncoming};
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic_health::ServingStatus;
use tracing::info;

use super::auth::AuthToken;
use super::metrics::Metrics;
use super::service::{LegacyService, RunsService, StatusService};
use super::{FILE_DESCRIPTOR_SET, legacy, v1};

/// The API's services, as `grpc.health.v1` names them.
const SERVICES: [&str; 3] = [
    "stagetime.v1.Runs",
    "revisionrun.StageTimeApplicationService",
    "revisionrun.Statuses",
];

/// Bounds on what a client may send or hold open.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest encoded request or response message (default 4 MiB); the
    /// transport refuses bigger ones with `OUT_OF_RANGE`.
    pub max_message_bytes: usize,
    /// Largest `SubmitRequest.document` (default 1 MiB).
    pub max_document_bytes: usize,
    /// Most tasks (with finally tasks) or legacy entries per run (default 5,000).
    pub max_tasks: usize,
    /// Most `Watch` streams open at once (default 1,024).
    pub max_watches: usize,
    /// Most client connections at once (default 4,096); beyond, new
    /// connections wait in the listen backlog until one closes. Streams per
    /// connection are capped at 1,024 (HTTP/2 `MAX_CONCURRENT_STREAMS`), so
    /// even the unauthenticated health and reflection services are bounded.
    pub max_connections: usize,
    /// How often an open `Watch` reads the run from the store (default 250 ms).
    pub watch_poll: Duration,
    /// A new connection that sends nothing (no TLS or HTTP/2 preface) for
    /// this long is closed (default 10 s).
    pub handshake_timeout: Duration,
    /// A connection that sends nothing for this long is closed (default
    /// 2 min). Live clients are never silent that long: the server pings
    /// every connection every 30 s and clients answer.
    pub idle_timeout: Duration,
    /// The workers' backend (its capabilities and name): submissions with
    /// tasks it cannot run are refused, naming each task, instead of
    /// failing at launch (default `None`: anything is accepted).
    pub runnable_by: Option<(Capabilities, String)>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 4 << 20,
            max_document_bytes: 1 << 20,
            max_tasks: 5_000,
            max_watches: 1_024,
            max_connections: 4_096,
            watch_poll: Duration::from_millis(250),
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            runnable_by: None,
        }
    }
}

/// PEM files of the server's certificate chain and private key.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Certificate chain (PEM).
    pub cert: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
}

/// Where the `Logs` rpc reads task logs ([`ServerConfig::logs`]).
#[derive(Clone)]
pub struct SharedLogSource(pub Arc<dyn LogSource>);

impl std::fmt::Debug for SharedLogSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedLogSource(..)")
    }
}

/// Server settings.
#[derive(Debug, Clone, Default)]
pub struct ServerConfig {
    /// Where `Logs` reads task logs; absent: the store's
    /// ([`stagetime_core::logs::StoreLogSource`]: the archived tails and the
    /// local backend's live feed).
    pub logs: Option<SharedLogSource>,
    /// Input bounds.
    pub limits: Limits,
    /// When set, every API call needs `authorization: Bearer <token>`;
    /// health and reflection stay open.
    pub auth: Option<AuthToken>,
    /// When set, serve TLS (rustls) with these files; otherwise plaintext.
    pub tls: Option<TlsFiles>,
}

/// Serves the API on `listener` until `shutdown` resolves, then stops
/// accepting, lets calls in progress finish and returns.
///
/// Services: `stagetime.v1.Runs`, `revisionrun.StageTimeApplicationService`,
/// `revisionrun.Statuses` (behind the token when one is configured),
/// `grpc.health.v1.Health` and server reflection (v1 and v1alpha; open).
///
/// # Errors
/// [`Error::Invalid`] naming `tls` when the certificate or key cannot be
/// read or used; [`Error::Unavailable`] when serving fails.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: ServerConfig,
    store: Arc<dyn Store>,
    metrics: Option<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let limits = config.limits.clone();
    let max = limits.max_message_bytes;
    let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
    let mut runs_service = RunsService::new(
        Arc::clone(&store),
        limits.clone(),
        metrics.clone(),
        stopping,
    );
    if let Some(logs) = &config.logs {
        runs_service = runs_service.with_logs(Arc::clone(&logs.0));
    }
    let runs = v1::runs_server::RunsServer::new(runs_service)
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let create =
        legacy::stage_time_application_service_server::StageTimeApplicationServiceServer::new(
            LegacyService::new(Arc::clone(&store), limits.clone(), metrics.clone()),
        )
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let statuses = legacy::statuses_server::StatusesServer::new(StatusService::new(
        Arc::clone(&store),
        limits.clone(),
        metrics.clone(),
    ))
    .max_decoding_message_size(max)
    .max_encoding_message_size(max);

    let (health, health_service) = tonic_health::server::health_reporter();
    for name in SERVICES {
        health
            .set_service_status(name, ServingStatus::Serving)
            .await;
    }
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| Error::unavailable("grpc reflection", e))?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| Error::unavailable("grpc reflection", e))?;

    let mut builder = Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .max_concurrent_streams(Some(1024));
    if let Some(tls) = &config.tls {
        let bad =
            |what: &str, e: &dyn std::fmt::Display| Error::config("tls", format!("{what}: {e}"));
        let cert = std::fs::read(&tls.cert)
            .map_err(|e| bad(&format!("cannot read {}", tls.cert.display()), &e))?;
        let key = std::fs::read(&tls.key)
            .map_err(|e| bad(&format!("cannot read {}", tls.key.display()), &e))?;
        builder = builder
            .tls_config(ServerTlsConfig::new().identity(Identity::from_pem(cert, key)))
            .map_err(|e| bad("certificate or key unusable", &e))?;
    }
    // Refused calls never reach a handler: count them here, by service.
    let check = |service: &'static str| {
        let auth = config.auth.clone();
        let metrics = metrics.clone();
        move |req: tonic::Request<()>| match &auth {
            Some(token) => token.check(req).inspect_err(|s| {
                if let Some(m) = &metrics {
                    m.grpc_request(service, s.code());
                }
            }),
            None => Ok(req),
        }
    };
    let router = builder
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(InterceptedService::new(runs, check("stagetime.v1.Runs/*")))
        .add_service(InterceptedService::new(
            create,
            check("revisionrun.StageTimeApplicationService/*"),
        ))
        .add_service(InterceptedService::new(
            statuses,
            check("revisionrun.Statuses/*"),
        ));
    let addr = listener
        .local_addr()
        .map_err(|e| Error::unavailable("grpc server", e))?;
    info!(
        %addr,
        tls = config.tls.is_some(),
        auth = config.auth.is_some(),
        "gRPC server serving"
    );
    let health_on_stop = health.clone();
    let shutdown = async move {
        shutdown.await;
        info!("gRPC server shutting down: refusing new calls, finishing those in progress");
        let _ = stopping_tx.send(true);
        for name in std::iter::once("").chain(SERVICES) {
            health_on_stop
                .set_service_status(name, ServingStatus::NotServing)
                .await;
        }
    };
    router
        .serve_with_incoming_shutdown(
            limit_connections(
                TcpIncoming::from(listener).with_nodelay(Some(true)),
                limits.max_connections,
                Silence {
                    first: limits.handshake_timeout,
                    between: limits.idle_timeout,
                },
            ),
            shutdown,
        )
        .await
        .map_err(|e| Error::unavailable("grpc server", e))
}

/// How long a connection may stay silent: before its first byte, and
/// between reads after that.
#[derive(Debug, Clone, Copy)]
struct Silence {
    first: Duration,
    between: Duration,
}

/// Accepts a connection only while fewer than `max` are open: each accepted
/// stream holds a permit until it is dropped (the connection closed). A
/// connection silent for longer than `silence` allows fails its read, which
/// closes it and frees its permit.
fn limit_connections<S, IO>(
    incoming: S,
    max: usize,
    silence: Silence,
) -> impl Stream<Item = std::io::Result<Limited<IO>>>
where
    S: Stream<Item = std::io::Result<IO>>,
{
    let permits = Arc::new(Semaphore::new(max));
    incoming.then(move |conn| {
        let permits = Arc::clone(&permits);
        async move {
            let io = conn?;
            let permit = permits
                .acquire_owned()
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            Ok(Limited {
                io,
                _permit: permit,
                silence,
                heard: false,
                deadline: Box::pin(tokio::time::sleep(silence.first)),
            })
        }
    })
}

/// A connection counted against [`Limits::max_connections`], closed when
/// silent for too long ([`Limits::handshake_timeout`],
/// [`Limits::idle_timeout`]).
struct Limited<IO> {
    io: IO,
    _permit: OwnedSemaphorePermit,
    silence: Silence,
    /// Whether the peer sent anything yet.
    heard: bool,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl<IO: Connected> Connected for Limited<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Limited<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(r) => {
                this.heard = true;
                let next = tokio::time::Instant::now() + this.silence.between;
                this.deadline.as_mut().reset(next);
                Poll::Ready(r)
            }
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    let what = if this.heard {
                        "the connection was idle too long"
                    } else {
                        "the client sent nothing after connecting"
                    };
                    Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::TimedOut, what)))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Limited<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    #[tokio::test]
    async fn a_connection_beyond_the_limit_waits_until_one_closes() {
        let conns: Vec<std::io::Result<tokio::io::DuplexStream>> =
            (0..3).map(|_| Ok(tokio::io::duplex(64).0)).collect();
        let silence = Silence {
            first: Duration::from_secs(60),
            between: Duration::from_secs(60),
        };
        let mut limited = Box::pin(limit_connections(futures::stream::iter(conns), 2, silence));
        let first = limited.next().await.unwrap().unwrap();
        let _second = limited.next().await.unwrap().unwrap();
        let mut third = limited.next();
        assert!(
            (&mut third).now_or_never().is_none(),
            "the third connection waits while two are open"
        );
        drop(first);
        assert!(third.await.unwrap().is_ok(), "accepted once one closed");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_is_closed_and_frees_its_place() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (server_side, mut client) = tokio::io::duplex(64);
        let silence = Silence {
            first: Duration::from_secs(10),
            between: Duration::from_secs(120),
        };
        let mut limited = Box::pin(limit_connections(
            futures::stream::iter([Ok(server_side)]),
            1,
            silence,
        ));
        let mut conn = limited.next().await.unwrap().unwrap();
        // Talking keeps it open past the handshake timeout...
        client.write_all(b"PRI").await.unwrap();
        let mut buf = [0u8; 3];
        conn.read_exact(&mut buf).await.unwrap();
        tokio::time::advance(Duration::from_secs(100)).await;
        client.write_all(b"x").await.unwrap();
        conn.read_exact(&mut buf[..1]).await.unwrap();
        // ...silence beyond the idle timeout closes it.
        let err = conn.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert!(err.to_string().contains("idle"), "{err}");

        let (never, _peer) = tokio::io::duplex(64);
        let mut limited = Box::pin(limit_connections(
            futures::stream::iter([Ok(never)]),
            1,
            silence,
        ));
        let mut conn = limited.next().await.unwrap().unwrap();
        let err = conn.read(&mut buf).await.unwrap_err();
        assert!(err.to_string().contains("sent nothing"), "{err}");
    }
}
