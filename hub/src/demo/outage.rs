//! A gateway's uplink going down: a TCP relay between one agent and the broker that cuts every
//! connection and refuses new ones while the town's clock is in the outage window, as a roadside
//! cabinet's 4G router does when it loses the network. The agent's production code path does the
//! rest (it notices, keeps reading into its spool, reconnects, sends the backlog).

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Starts the relay on a free loopback port, forwarding to `upstream` except between `down` and
/// `up` (real times); returns its address.
pub async fn relay(
    upstream: SocketAddr,
    (down, up): (Instant, Instant),
    stop: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = stop.cancelled() => return,
                a = listener.accept() => a,
            };
            let Ok((client, _)) = accepted else { continue };
            let now = Instant::now();
            if now >= down && now < up {
                // The network is gone: the connection attempt goes nowhere.
                drop(client);
                continue;
            }
            let stop = stop.clone();
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    return;
                };
                let (mut client, mut server) = (client, server);
                let cut = async {
                    if Instant::now() < down {
                        tokio::time::sleep_until(down).await;
                    } else {
                        std::future::pending::<()>().await;
                    }
                };
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = cut => tracing::info!("demo: uplink cut"),
                    _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                }
            });
        }
    });
    Ok(addr)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn forwards_then_cuts_then_forwards_again() {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = echo.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = echo.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let now = Instant::now();
        let window = (
            now + Duration::from_millis(300),
            now + Duration::from_millis(800),
        );
        let stop = CancellationToken::new();
        let addr = relay(upstream, window, stop.clone()).await.unwrap();
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"hi").await.unwrap();
        let mut buf = [0u8; 2];
        c.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hi");
        // The cut closes the open connection...
        tokio::time::sleep_until(window.0 + Duration::from_millis(50)).await;
        let mut rest = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(2), c.read_to_end(&mut rest))
            .await
            .unwrap()
            .unwrap_or(0);
        assert_eq!(n, 0);
        // ...and new ones go nowhere while it lasts.
        let mut d = TcpStream::connect(addr).await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(2), d.read(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        assert_eq!(n, 0);
        tokio::time::sleep_until(window.1).await;
        let mut e = TcpStream::connect(addr).await.unwrap();
        e.write_all(b"ok").await.unwrap();
        e.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ok");
        stop.cancel();
    }
}
