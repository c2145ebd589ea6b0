//! The accept loop: one HTTP/1.1 connection per task, with a deadline for the request headers
//! and a cap on open connections, and graceful shutdown.
//!
//! `axum::serve` offers neither a header timeout nor a connection cap, and a client that never
//! finishes its headers is otherwise held forever: enough of them exhaust the file descriptors
//! and the server stops accepting anything, health checks included. So connections are served
//! here with hyper directly, as axum's own "serve-with-hyper" example does.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use super::ServerConfig;

/// Serves `app` on `listener` until `stop` turns true, then lets open requests finish (idle
/// connections are closed at once) and returns when every connection is closed.
pub async fn serve_connections(listener: TcpListener, app: Router, config: &ServerConfig, mut stop: watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let at_capacity_said = Arc::new(AtomicBool::new(false));
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        // A slot first, then accept: at the cap, new connections queue in the kernel's backlog.
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                if !at_capacity_said.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "{} connections are open (--max-connections): new ones wait until one closes; clients that never finish their headers are dropped after {:?}",
                        config.max_connections,
                        config.header_timeout
                    );
                }
                tokio::select! {
                    slot = slots.clone().acquire_owned() => match slot {
                        Ok(slot) => slot,
                        Err(_) => break,
                    },
                    () = stopped(&mut stop) => break,
                }
            }
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stopped(&mut stop) => break,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                // Per-connection failures (the peer reset before accept) are not worth a word; a
                // process out of descriptors is, and retrying at once would spin.
                if !matches!(e.kind(), std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::ConnectionReset) {
                    tracing::warn!("accept failed: {e}; retrying in a second");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
                continue;
            }
        };
        if slots.available_permits() > 0 {
            at_capacity_said.store(false, Ordering::Relaxed);
        }
        let service = TowerToHyperService::new(app.clone());
        let header_timeout = config.header_timeout;
        let mut stop = stop.clone();
        connections.spawn(async move {
            let _slot = slot;
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new()).header_read_timeout(header_timeout);
            let connection = http.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                () = stopped(&mut stop) => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

/// Resolves once the shutdown signal is set (at once if it already is).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is dropped here, before any other await.
    let _ = stop.wait_for(|s| *s).await;
}
