//! Accepting TLS connections for a tonic server: each handshake runs in a
//! task of its own, under a deadline and a cap on how many may be pending,
//! so a client that connects and says nothing (or thousands of them) cannot
//! keep honest clients out.

use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_stream::{Stream, StreamExt, wrappers::ReceiverStream};

/// A connection a server accepted over TLS.
pub type ServerStream<IO = TcpStream> = TlsStream<IO>;

/// A handshake not finished by then is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; a connection beyond them is closed at
/// once rather than queued behind a flood.
pub const MAX_PENDING_HANDSHAKES: usize = 256;

/// Turns accepted TCP connections into TLS streams for
/// `serve_with_incoming`. Failed handshakes are logged and dropped; the
/// stream never yields an error (tonic would end the server on one).
pub fn accept<IO>(
    mut tcp: impl Stream<Item = std::io::Result<IO>> + Send + Unpin + 'static,
    config: Arc<rustls::ServerConfig>,
) -> (
    ReceiverStream<std::io::Result<TlsStream<IO>>>,
    tokio::task::JoinHandle<()>,
)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, receiver) = tokio::sync::mpsc::channel(64);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let pending = Arc::new(tokio::sync::Semaphore::new(MAX_PENDING_HANDSHAKES));
    let task = tokio::spawn(async move {
        while let Some(connection) = tcp.next().await {
            let Ok(stream) = connection else { continue };
            let Ok(permit) = pending.clone().try_acquire_owned() else {
                tracing::debug!("too many TLS handshakes pending; closing a new connection");
                continue;
            };
            let acceptor = acceptor.clone();
            let handed = sender.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        drop(permit);
                        handed.send(Ok(tls)).await.ok();
                    }
                    Ok(Err(error)) => tracing::debug!(%error, "TLS handshake failed"),
                    Err(_) => tracing::debug!("TLS handshake timed out"),
                }
            });
            if sender.is_closed() {
                break;
            }
        }
    });
    (ReceiverStream::new(receiver), task)
}
