//! The embedded MQTT broker (rumqttd): what a one-machine town runs so it needs nothing else.
//!
//! It runs on its own threads (rumqttd brings its own runtimes) and lives as long as the process.
//! rumqttd 0.20 has no topic ACL, so the broker alone cannot stop a gateway from publishing on
//! another's topics; see docs/PROTOCOL.md for how authentication is layered on top.
//!
//! Logins: with [`BrokerLogins`] (the default, when the hub requires signed messages) every client
//! must log in. A gateway logs in as its gateway id with the password derived from its key
//! ([`protocol::auth::broker_password`]); the hub's own ingest client with a password made at
//! start. Without it (`--allow-unsigned`) the broker takes anonymous clients.

use std::collections::HashMap;
use std::net::SocketAddr;

use anyhow::Context;
use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

/// Who may log in to the embedded broker.
#[derive(Debug, Clone)]
pub struct BrokerLogins {
    pub keys: std::sync::Arc<crate::keys::KeyRing>,
    /// The hub's own ingest client.
    pub hub_username: String,
    pub hub_password: String,
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
}

impl BrokerLogins {
    fn allows(&self, client_id: &str, username: &str, password: &str) -> bool {
        use subtle::ConstantTimeEq;
        let ok = if username == self.hub_username {
            bool::from(password.as_bytes().ct_eq(self.hub_password.as_bytes()))
        } else {
            self.keys.check_broker_login(username, password)
        };
        if !ok {
            self.metrics
                .broker_logins_refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(%client_id, %username, "embedded broker refused a login: unknown user or wrong password");
        }
        ok
    }
}

/// Starts the broker listening on `listen`. Fails if the address cannot be bound.
pub fn start(
    listen: SocketAddr,
    max_payload: usize,
    logins: Option<BrokerLogins>,
) -> anyhow::Result<()> {
    // rumqttd reports a failed bind only in its log, from its own thread: bind here first so the
    // operator gets a clear error (the listener is released again before rumqttd binds).
    drop(
        std::net::TcpListener::bind(listen)
            .with_context(|| format!("cannot listen for MQTT on {listen}"))?,
    );
    let mut connections = ConnectionSettings {
        connection_timeout_ms: 10_000,
        max_payload_size: max_payload + 4096,
        max_inflight_count: 500,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    if let Some(logins) = logins {
        connections.set_auth_handler(move |client_id: String, user: String, pass: String| {
            let logins = logins.clone();
            async move {
                // The key check may read the key table: off the broker's threads.
                tokio::task::spawn_blocking(move || logins.allows(&client_id, &user, &pass))
                    .await
                    .unwrap_or(false)
            }
        });
    }
    let server = ServerSettings {
        name: "v4-gateways".into(),
        listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections,
    };
    let config = Config {
        id: 0,
        router: RouterConfig {
            max_connections: 10_010,
            max_outgoing_packet_count: 500,
            // The router keeps a commit log per subscription filter: 8 segments of 16 MiB bounds the
            // memory a slow subscriber can pin.
            max_segment_size: 16 * 1024 * 1024,
            max_segment_count: 8,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(HashMap::from([("1".to_owned(), server)])),
        ..Default::default()
    };
    let mut broker = Broker::new(config);
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded MQTT broker stopped");
            }
        })
        .context("cannot start the broker thread")?;
    // rumqttd binds from its own thread; wait until it accepts connections so that clients started
    // next (ingest, the demo's agents) do not begin with a refused connection.
    let probe = if listen.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], listen.port()))
    } else {
        listen
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::net::TcpStream::connect_timeout(&probe, std::time::Duration::from_millis(100))
        .is_err()
    {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the embedded broker did not start listening on {listen}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    tracing::info!(%listen, "embedded MQTT broker listening");
    Ok(())
}
