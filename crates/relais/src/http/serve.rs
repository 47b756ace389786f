//! The one HTTP(S) accept loop of Relais, the demo providers, the demo
//! services and the benchmark's built-in upstream.
//!
//! What it bounds, so that idle, half-sent or stalled connections cannot pile
//! up until the file descriptors run out:
//! - **header read timeout** (hyper's): a request head (request line and
//!   headers) not complete within `header_read_timeout` closes the
//!   connection. hyper starts this timer again as soon as a keep-alive
//!   connection waits for its next request, and it also bounds the TLS
//!   handshake;
//! - **idle timeout**: a connection on which not one byte was read or written
//!   for `idle_timeout` is closed — idle keep-alive connections, stalled
//!   request bodies and clients that stop reading a response. (A handler that
//!   would compute for longer without any I/O would be cut too; Relais'
//!   handlers are bounded well below by the upstream and database timeouts.)
//! - **connection cap**: at most `max_connections` connections at once; past
//!   it a connection is accepted and refused at once (a minimal `503` on
//!   plain HTTP, closed on HTTPS), counted in a warning logged at most once
//!   per second.

use crate::config::ServerConfig;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// File descriptors kept for everything that is not an inbound connection
/// (database pool, key files, logs, outbound calls beyond the share below).
const FD_RESERVE: u64 = 256;

/// Bounds of one server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

impl Default for Limits {
    /// The `[server]` defaults: 10 s, 60 s, the cap from the descriptor limit.
    fn default() -> Limits {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: default_max_connections(fd_limit()),
        }
    }
}

impl Limits {
    /// Relais' own limits: the `[server]` settings; without
    /// `max_connections`, half of the file descriptors left after a reserve
    /// (a request may open an outbound connection to an upstream too).
    pub fn from_config(s: &ServerConfig) -> Limits {
        Limits {
            header_read_timeout: Duration::from_secs(s.header_read_timeout_secs.max(1)),
            idle_timeout: Duration::from_secs(s.idle_timeout_secs.max(1)),
            max_connections: s
                .max_connections
                .unwrap_or_else(|| default_max_connections(fd_limit())),
        }
    }

    /// Limits of the demo servers that share the broker's process: the same
    /// timeouts, and a small share of the descriptors each (at least 32).
    pub fn demo(s: &ServerConfig) -> Limits {
        Limits {
            max_connections: (fd_limit().saturating_sub(FD_RESERVE) / 32).max(32) as usize,
            ..Limits::from_config(s)
        }
    }
}

/// Most connections by default, whatever the descriptor limit: memory
/// (request buffers, bodies up to `BODY_LIMIT`) runs out before descriptors
/// once the soft limit is raised to a large hard limit.
pub const MAX_CONNECTIONS_CEILING: usize = 10_000;

/// Default connection cap for a soft descriptor limit of `fds`.
pub fn default_max_connections(fds: u64) -> usize {
    ((fds.saturating_sub(FD_RESERVE) / 2).max(64) as usize).min(MAX_CONNECTIONS_CEILING)
}

/// The soft limit of open files of this process (1024 if unknown).
pub fn fd_limit() -> u64 {
    #[cfg(unix)]
    {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit only writes the struct it is given.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } == 0 {
            // rlim_t is not u64 on every platform.
            #[allow(clippy::unnecessary_cast)]
            return r.rlim_cur as u64;
        }
    }
    1024
}

/// Raise the soft limit of open files to the hard limit (once per process;
/// best effort). Returns the soft limit in force afterwards.
pub fn raise_fd_limit() -> u64 {
    static RAISED: std::sync::Once = std::sync::Once::new();
    RAISED.call_once(|| {
        #[cfg(unix)]
        {
            let mut r = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: getrlimit/setrlimit only read or write the struct given.
            unsafe {
                if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
                    let want = libc::rlimit {
                        rlim_cur: r.rlim_max,
                        rlim_max: r.rlim_max,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &want) != 0 {
                        tracing::debug!("could not raise the open files limit");
                    }
                }
            }
        }
    });
    fd_limit()
}

/// Serve `app` on `listener` (HTTPS when `tls` is given) until the task is
/// dropped. The client's address is given to handlers as `ConnectInfo`.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    limits: Limits,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut refused = RateLimitedCount::default();
    let mut accept_errors = RateLimitedCount::default();
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Typically EMFILE: wait a little instead of spinning.
                if let Some(n) = accept_errors.add() {
                    tracing::warn!(error = %e, count = n, "accept failed");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            if acceptor.is_none() {
                // The socket's send buffer is empty: this never blocks.
                let _ = tcp.try_write(REFUSAL);
            }
            drop(tcp);
            if let Some(n) = refused.add() {
                tracing::warn!(
                    refused = n,
                    max_connections = limits.max_connections,
                    "connection cap reached: connections refused"
                );
            }
            continue;
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tcp.set_nodelay(true);
            let activity = Arc::new(Activity::new());
            let io = Tracked {
                inner: tcp,
                activity: activity.clone(),
            };
            match acceptor {
                None => connection(io, peer, app, limits, activity).await,
                Some(acceptor) => {
                    match tokio::time::timeout(limits.header_read_timeout, acceptor.accept(io))
                        .await
                    {
                        Ok(Ok(stream)) => connection(stream, peer, app, limits, activity).await,
                        _ => tracing::debug!("TLS handshake failed"),
                    }
                }
            }
        });
    }
}

/// Spawn [`serve`] for plain HTTP; the task logs nothing when it ends.
pub fn spawn(listener: TcpListener, app: axum::Router, limits: Limits) {
    tokio::spawn(serve(listener, app, limits, None));
}

const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nretry-after: 1\r\nconnection: close\r\n\r\n";

/// One connection: hyper's HTTP/1.1 with its header read timeout, raced
/// against the idle watchdog.
async fn connection<IO>(
    io: IO,
    peer: SocketAddr,
    app: axum::Router,
    limits: Limits,
    activity: Arc<Activity>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // The router is shared, not rebuilt per connection; each request gets
    // the client's address (aidant sign-in throttling).
    let service =
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            tower::ServiceExt::oneshot(app.clone(), req)
        });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .serve_connection(hyper_util::rt::TokioIo::new(io), service);
    tokio::select! {
        r = conn => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "connection closed on error");
            }
        }
        _ = activity.idle_for(limits.idle_timeout) => {
            tracing::debug!("idle connection closed");
        }
    }
}

/// When a connection last moved a byte.
struct Activity {
    start: Instant,
    /// Milliseconds after `start`.
    last: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            start: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last.store(ms, Ordering::Relaxed);
    }

    /// Resolves once nothing moved for `limit`.
    async fn idle_for(&self, limit: Duration) {
        loop {
            let last = self.start + Duration::from_millis(self.last.load(Ordering::Relaxed));
            let deadline = last + limit;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline.into()).await;
        }
    }
}

/// A stream that records its progress in an [`Activity`].
struct Tracked {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Counts events and lets the caller log them at most once per second.
#[derive(Default)]
struct RateLimitedCount {
    pending: u64,
    last_log: Option<Instant>,
}

impl RateLimitedCount {
    /// Count one event; returns the count to log when a log is due.
    fn add(&mut self) -> Option<u64> {
        self.pending += 1;
        let due = self
            .last_log
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
        if due {
            self.last_log = Some(Instant::now());
            Some(std::mem::take(&mut self.pending))
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_logged_at_most_once_per_second() {
        let mut c = RateLimitedCount::default();
        assert_eq!(c.add(), Some(1));
        for _ in 0..1000 {
            assert_eq!(c.add(), None);
        }
        c.last_log = Some(Instant::now() - Duration::from_secs(2));
        assert_eq!(c.add(), Some(1001));
    }

    #[test]
    fn default_cap_leaves_descriptors_for_the_rest() {
        assert_eq!(default_max_connections(20_000), (20_000 - 256) / 2);
        assert_eq!(default_max_connections(1_048_576), MAX_CONNECTIONS_CEILING);
        assert_eq!(default_max_connections(1024), 384);
        assert_eq!(default_max_connections(100), 64);
    }
}
