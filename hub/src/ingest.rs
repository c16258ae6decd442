//! MQTT ingest: subscribes to every gateway's topics, decodes and checks each message, and hands it to
//! the store; acknowledges it to the broker only once the store has committed it.
//!
//! The same code serves the embedded broker and an external one (Mosquitto, EMQX): the hub is always an
//! ordinary MQTT client with a persistent session and manual acknowledgements, so a message the hub
//! has not stored is redelivered after a hub or connection restart, and deduplicated by the store.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use protocol::{
    Channel, ClockState, Envelope, Heartbeat, Item, Limits, Presence, Reply, Timestamp, TopicScheme,
};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::keys::{KeyRing, Verdict};
use crate::metrics::Metrics;
use crate::store::{Ack, Store, WriteOp};

/// A message the hub publishes (a command to a gateway).
#[derive(Debug)]
pub struct Outgoing {
    pub topic: String,
    pub payload: Vec<u8>,
}

/// Where and how the ingest client connects.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    /// TLS to the broker (`mqtts://`).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub topics: TopicScheme,
    pub limits: Limits,
    /// Every message is authenticated with its gateway's key (see [`crate::keys`]).
    pub keys: Arc<KeyRing>,
}

/// Runs until `shutdown` is cancelled. Connection failures are retried with backoff, never fatal.
pub async fn run(
    cfg: IngestConfig,
    store: Store,
    metrics: Arc<Metrics>,
    mut outgoing: mpsc::Receiver<Outgoing>,
    shutdown: CancellationToken,
) {
    let mut opts = MqttOptions::new(cfg.client_id.clone(), cfg.host.clone(), cfg.port);
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_clean_session(false);
    opts.set_manual_acks(true);
    opts.set_max_packet_size(cfg.limits.max_payload + 4096, cfg.limits.max_payload + 4096);
    if let (Some(u), Some(p)) = (&cfg.username, &cfg.password) {
        opts.set_credentials(u.clone(), p.clone());
    }
    if let Some(tls) = &cfg.tls {
        opts.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(tls.clone()),
        ));
    }
    let (client, mut eventloop) = AsyncClient::new(opts, 4096);
    let (ack_tx, mut ack_rx) = mpsc::unbounded_channel::<Publish>();
    let filters: Vec<String> = [Channel::Up, Channel::State, Channel::Status, Channel::Reply]
        .iter()
        .map(|c| cfg.topics.filter_all(*c))
        .collect();
    let mut failures = 0u32;
    let mut reload = tokio::time::interval(crate::keys::RELOAD_EVERY);
    reload.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = reload.tick() => {
                // New and revoked keys (`hub keys ...` works beside a running hub).
                let keys = cfg.keys.clone();
                let _ = tokio::task::spawn_blocking(move || keys.refresh()).await;
            }
            Some(out) = outgoing.recv() => {
                // Commands to gateways, signed with the gateway's key (QoS 1; rumqttc keeps them
                // while the broker is away).
                let payload = match cfg.topics.parse(&out.topic).ok().and_then(|(gw, _)| cfg.keys.signing_key(gw.as_str())) {
                    Some(key) => protocol::auth::seal(&key, &out.topic, &out.payload),
                    None => out.payload,
                };
                if let Err(e) = client.publish(out.topic, QoS::AtLeastOnce, false, payload).await {
                    tracing::error!(error = %e, "cannot queue a command for the broker");
                }
            }
            Some(p) = ack_rx.recv() => {
                if let Err(e) = client.try_ack(&p) {
                    // The message stays unacknowledged and comes again after a reconnect; the store
                    // recognises it then.
                    tracing::warn!(error = %e, "could not queue a broker acknowledgement");
                }
            }
            ev = eventloop.poll() => match ev {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    failures = 0;
                    metrics.mqtt_connections.fetch_add(1, Relaxed);
                    tracing::info!(host = %cfg.host, port = cfg.port, session_present = ack.session_present, "ingest connected to broker");
                    for f in &filters {
                        if let Err(e) = client.try_subscribe(f.clone(), QoS::AtLeastOnce) {
                            tracing::error!(error = %e, filter = %f, "cannot subscribe");
                        }
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if !metrics.ingest_ready.swap(true, Relaxed) {
                        tracing::info!("ingest subscribed to every gateway's topics");
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    // A key added moments ago: reload (if the key table changed) before refusing.
                    if let Ok((gw, _)) = cfg.topics.parse(&p.topic)
                        && cfg.keys.names_unknown_key(&gw, &p.payload)
                    {
                        let keys = cfg.keys.clone();
                        let _ = tokio::task::spawn_blocking(move || keys.refresh()).await;
                    }
                    let tx = ack_tx.clone();
                    let needs_ack = p.qos != QoS::AtMostOnce;
                    let op = classify(&cfg, &p, &metrics);
                    let ack: Option<Ack> = needs_ack.then(|| Box::new(move || { let _ = tx.send(p); }) as Ack);
                    match op {
                        Some(op) => {
                            if store.write(op, ack).await.is_err() {
                                tracing::error!("store closed; ingest stops");
                                break;
                            }
                        }
                        None => if let Some(ack) = ack { ack() },
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    failures += 1;
                    metrics.ingest_ready.store(false, Relaxed);
                    metrics.mqtt_errors.fetch_add(1, Relaxed);
                    if failures == 1 {
                        tracing::warn!(error = %e, host = %cfg.host, port = cfg.port, "ingest lost the broker; reconnecting");
                    }
                    let wait = protocol::reconnect::delay(failures, fastrand::f64());
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }
    // Acknowledge what the store committed meanwhile, then leave cleanly.
    while let Ok(p) = ack_rx.try_recv() {
        let _ = client.try_ack(&p);
    }
    metrics.ingest_ready.store(false, Relaxed);
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        while let Ok(ev) = eventloop.poll().await {
            if matches!(ev, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                break;
            }
        }
    })
    .await;
    tracing::info!("ingest stopped");
}

/// Decodes one message into the write it causes, or a dead letter. `None`: nothing to store.
fn classify(cfg: &IngestConfig, p: &Publish, metrics: &Metrics) -> Option<WriteOp> {
    metrics.messages_received.fetch_add(1, Relaxed);
    let received = Timestamp::now();
    let dead = |gateway: Option<String>, code: &str, reason: String| {
        metrics.rejected(code);
        tracing::debug!(topic = %p.topic, code, %reason, "message set aside");
        Some(WriteOp::DeadLetter {
            received,
            topic: p.topic.clone(),
            gateway,
            code: code.to_owned(),
            reason,
            payload: p.payload.to_vec(),
        })
    };
    let (gateway, channel) = match cfg.topics.parse(&p.topic) {
        Ok(x) => x,
        Err(e) => return dead(None, "topic", e.to_string()),
    };
    let gw = Some(gateway.to_string());
    if channel == Channel::State && p.payload.is_empty() {
        return None; // a retained message being cleared
    }
    if channel == Channel::Cmd {
        return dead(
            gw,
            "wrong_direction",
            "gateways do not publish on the command topic".into(),
        );
    }
    let msg = match cfg.keys.check(&gateway, &p.topic, &p.payload) {
        Ok(Verdict::Signed(m)) => m,
        Ok(Verdict::UnsignedAllowed(m)) => {
            metrics.unsigned_accepted.fetch_add(1, Relaxed);
            m
        }
        Err(e) => {
            let reason = crate::keys::explain(&e, &gateway, cfg.keys.policy);
            return dead(gw, e.code(), reason);
        }
    };
    macro_rules! decode {
        ($t:ty) => {
            match protocol::decode::<$t>(msg, &cfg.limits) {
                Ok(m) if m.gateway == gateway => m,
                Ok(m) => {
                    return dead(
                        gw,
                        "gateway_mismatch",
                        format!(
                            "topic names gateway {gateway} but the message says {}",
                            m.gateway
                        ),
                    )
                }
                Err(e) => return dead(gw, e.code(), e.to_string()),
            }
        };
    }
    match channel {
        Channel::Up => {
            let env = decode!(Envelope);
            Some(WriteOp::Envelope {
                env: correct_clock(env, received),
                received,
            })
        }
        Channel::State => {
            let presence = decode!(Presence);
            metrics.presences.fetch_add(1, Relaxed);
            Some(WriteOp::Presence { presence, received })
        }
        Channel::Status => {
            let heartbeat = decode!(Heartbeat);
            metrics.heartbeats.fetch_add(1, Relaxed);
            Some(WriteOp::Heartbeat {
                heartbeat,
                received,
            })
        }
        Channel::Reply => {
            let reply = decode!(Reply);
            metrics.replies.fetch_add(1, Relaxed);
            tracing::info!(gateway = %reply.gateway, command = %reply.id, outcome = ?reply.outcome, detail = ?reply.detail, "command reply");
            Some(WriteOp::Reply { reply, received })
        }
        Channel::Cmd => None, // refused above
    }
}

/// Items stamped by an unsynchronised gateway clock are shifted by the difference between the hub's
/// receive time and the gateway's `sentAt`: the best estimate of the gateway clock's error (it
/// includes the transit time, which is small compared with a clock that restarted at 1970).
pub fn correct_clock(mut env: Envelope, received: Timestamp) -> Envelope {
    if env.clock == ClockState::Unsynced {
        let offset = received.millis_since(env.sent_at);
        for item in &mut env.items {
            match item {
                Item::Reading(r) => r.observed_at = r.observed_at.add_millis(offset),
                Item::Event(e) => e.observed_at = e.observed_at.add_millis(offset),
            }
        }
        env.sent_at = received;
        env.clock = ClockState::Synced;
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsynced_times_are_shifted_to_hub_time() {
        let env: Envelope = serde_json::from_value(serde_json::json!({
            "v": 1, "gateway": "gw", "boot": "67e55044-10b1-426f-9247-bb680e5fe0c8", "seq": 0,
            "sentAt": "1970-01-01T00:10:00.000Z", "clock": "unsynced",
            "items": [{"kind": "reading", "device": "d", "metric": "m", "observedAt": "1970-01-01T00:09:00.000Z", "value": 1}]
        }))
        .unwrap();
        let received = Timestamp::parse_rfc3339("2026-11-22T06:00:00Z").unwrap();
        let fixed = correct_clock(env, received);
        assert_eq!(
            fixed.items[0].observed_at().to_rfc3339(),
            "2026-11-22T05:59:00.000Z"
        );
    }
}
