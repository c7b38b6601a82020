//! Bytes the listeners have written to their clients, counted at the socket.
//!
//! At shutdown a follower's last records and its final loss count may still
//! be on their way: in the HTTP/2 send buffers, waiting for the client to
//! open its flow-control window. Dropping the connection then loses them
//! without telling anyone. The count lets the agent wait as long as clients
//! keep taking bytes, and give up only on a connection that makes no
//! progress (see `agent::Services::stop`).

use std::{
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// The bytes written to every client of every listener so far; clones share
/// one count.
#[derive(Clone, Debug, Default)]
pub struct SentBytes(Arc<AtomicU64>);

impl SentBytes {
    /// The bytes written so far.
    pub fn total(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// `io`, counting what is written to it here.
    pub fn count<IO>(&self, io: IO) -> Counted<IO> {
        Counted {
            io,
            sent: self.clone(),
        }
    }
}

/// A connection whose writes add to a [`SentBytes`]. Everything else, the
/// connection's peer address and certificates included, is the inner one's.
#[derive(Debug)]
pub struct Counted<IO> {
    io: IO,
    sent: SentBytes,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Counted<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Counted<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(count)) = written {
            self.sent.0.fetch_add(count as u64, Ordering::Relaxed);
        }
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(count)) = written {
            self.sent.0.fetch_add(count as u64, Ordering::Relaxed);
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl<IO: Connected> Connected for Counted<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    #[tokio::test]
    async fn writes_are_counted_and_reads_pass_through() {
        let sent = SentBytes::default();
        let (client, server) = tokio::io::duplex(64);
        let mut server = sent.count(server);
        let mut client = sent.count(client);
        server.write_all(b"hello").await.unwrap();
        client.write_all(b"hi").await.unwrap();
        let mut buffer = [0u8; 5];
        client.read_exact(&mut buffer).await.unwrap();
        assert_eq!(&buffer, b"hello");
        let mut buffer = [0u8; 2];
        server.read_exact(&mut buffer).await.unwrap();
        assert_eq!(&buffer, b"hi");
        // Both ends share one count here: 5 + 2 bytes written.
        assert_eq!(sent.total(), 7);
    }
}
