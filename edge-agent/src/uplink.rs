//! The uplink: batches items into numbered envelopes and publishes them to the hub over MQTT (QoS 1),
//! with a retained presence message (the device inventory) on connect, an `offline` last will, and a
//! periodic heartbeat. Last stage of the agent's flow: pollers ─▶ uplink ─▶ broker.
//!
//! The uplink runs until the item channel closes (every poller has stopped), then flushes what it
//! holds, marks the gateway offline and disconnects: shutdown in pipeline order.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use protocol::{
    BootId, Channel, Command, DeviceInfo, EncodeError, Envelope, GatewayId, Heartbeat, Item,
    Limits, Presence, PresenceState, Reply, Timestamp, TopicScheme,
};
use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;

use crate::clock::{self, ClockSource};
use crate::health::Health;

#[derive(Debug, Clone)]
pub struct UplinkConfig {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub keep_alive: Duration,
    pub topics: TopicScheme,
    pub gateway: GatewayId,
    pub batch_max_items: usize,
    pub batch_max_wait: Duration,
    pub heartbeat: Duration,
    pub clock: ClockSource,
    /// The inventory announced in the presence message.
    pub devices: Vec<DeviceInfo>,
    pub config_version: Option<String>,
}

/// How long the final flush may take at shutdown before the agent gives up waiting for the broker.
pub const FLUSH_DEADLINE: Duration = Duration::from_secs(5);

struct Publisher {
    client: AsyncClient,
    cfg: UplinkConfig,
    boot: BootId,
    seq: u64,
    limits: Limits,
    health: Arc<Health>,
    started: Instant,
}

/// Runs the uplink until `items` closes.
pub async fn run(
    cfg: UplinkConfig,
    mut items: mpsc::Receiver<Item>,
    health: Arc<Health>,
    commands: mpsc::Sender<Command>,
    mut replies: mpsc::Receiver<Reply>,
) {
    let boot = BootId::from_uuid(uuid::Uuid::new_v4());
    let limits = Limits::default();
    let connected_at = Timestamp::now();
    let presence = |state| Presence {
        v: protocol::PROTOCOL_VERSION,
        gateway: cfg.gateway.clone(),
        boot,
        state,
        sent_at: connected_at,
        clock: clock::state(cfg.clock),
        agent: Some(concat!("edge-agent ", env!("CARGO_PKG_VERSION")).to_owned()),
        config_version: cfg.config_version.clone(),
        devices: if state == PresenceState::Online {
            cfg.devices.clone()
        } else {
            Vec::new()
        },
    };
    let state_topic = cfg.topics.topic(&cfg.gateway, Channel::State);
    let online = protocol::encode(&presence(PresenceState::Online), &limits);
    let offline = protocol::encode(&presence(PresenceState::Offline), &limits);
    let (online, offline) = match (online, offline) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error = %e, "cannot encode the presence message; uplink not started");
            return;
        }
    };

    let mut opts = MqttOptions::new(cfg.client_id.clone(), cfg.host.clone(), cfg.port);
    opts.set_keep_alive(cfg.keep_alive);
    opts.set_max_packet_size(limits.max_payload + 4096, limits.max_payload + 4096);
    opts.set_last_will(LastWill::new(
        state_topic.clone(),
        offline.clone(),
        QoS::AtLeastOnce,
        true,
    ));
    if let (Some(u), Some(p)) = (&cfg.username, &cfg.password) {
        opts.set_credentials(u.clone(), p.clone());
    }
    let (client, eventloop) = AsyncClient::new(opts, 1024);
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let cmd_topic = cfg.topics.topic(&cfg.gateway, Channel::Cmd);
    let link = Link {
        state_topic: state_topic.clone(),
        online,
        cmd_topic,
        commands,
        health: health.clone(),
    };
    let conn = tokio::spawn(drive(eventloop, client.clone(), link, done_rx));

    let mut p = Publisher {
        client,
        cfg,
        boot,
        seq: 0,
        limits,
        health,
        started: Instant::now(),
    };
    let mut batch: Vec<Item> = Vec::with_capacity(p.cfg.batch_max_items);
    let mut deadline: Option<tokio::time::Instant> = None;
    let mut heartbeat = tokio::time::interval(p.cfg.heartbeat);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let flush_at =
            deadline.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            item = items.recv() => match item {
                Some(item) => {
                    if batch.is_empty() {
                        deadline = Some(tokio::time::Instant::now() + p.cfg.batch_max_wait);
                    }
                    batch.push(item);
                    if batch.len() >= p.cfg.batch_max_items {
                        p.publish_batch(std::mem::take(&mut batch)).await;
                        deadline = None;
                    }
                }
                None => break,
            },
            _ = tokio::time::sleep_until(flush_at), if deadline.is_some() => {
                p.publish_batch(std::mem::take(&mut batch)).await;
                deadline = None;
            }
            _ = heartbeat.tick() => p.publish_heartbeat().await,
            Some(reply) = replies.recv() => p.publish_reply(&reply).await,
        }
    }
    if !batch.is_empty() {
        p.publish_batch(batch).await;
    }
    // Mark the gateway offline on purpose (the last will is only for unclean ends), then disconnect.
    let _ = p
        .client
        .publish(state_topic, QoS::AtLeastOnce, true, offline)
        .await;
    let _ = done_tx.send(());
    let _ = tokio::time::timeout(FLUSH_DEADLINE + Duration::from_secs(1), conn).await;
    let h = &p.health;
    tracing::info!(
        envelopes = p.seq,
        published = h.envelopes_published.load(Relaxed),
        readings = h.readings_collected.load(Relaxed),
        publish_errors = h.publish_errors.load(Relaxed),
        source_rejected = h.source_rejected.load(Relaxed),
        "uplink stopped"
    );
}

impl Publisher {
    /// Publishes `items` as one envelope, or several if one would be too large.
    async fn publish_batch(&mut self, items: Vec<Item>) {
        if items.is_empty() {
            return;
        }
        let clock = clock::state(self.cfg.clock);
        let mut env = Envelope {
            v: protocol::PROTOCOL_VERSION,
            gateway: self.cfg.gateway.clone(),
            boot: self.boot,
            seq: self.seq,
            sent_at: Timestamp::now(),
            clock,
            items,
        };
        match protocol::encode(&env, &self.limits) {
            Ok(bytes) => {
                self.seq += 1;
                let topic = self.cfg.topics.topic(&self.cfg.gateway, Channel::Up);
                // Waits while the client's request queue is full (broker unreachable): backpressure
                // reaches the pollers through the item channel instead of growing memory.
                match self
                    .client
                    .publish(topic, QoS::AtLeastOnce, false, bytes)
                    .await
                {
                    Ok(()) => {
                        self.health.envelopes_published.fetch_add(1, Relaxed);
                    }
                    Err(e) => {
                        self.health.publish_errors.fetch_add(1, Relaxed);
                        tracing::error!(error = %e, "MQTT client closed; envelope lost");
                    }
                }
            }
            Err(EncodeError::TooLarge { .. }) if env.items.len() > 1 => {
                let second = env.items.split_off(env.items.len() / 2);
                Box::pin(self.publish_batch(env.items)).await;
                Box::pin(self.publish_batch(second)).await;
            }
            Err(e) => {
                // Items are built from validated profiles, so this is a bug; count it, keep going.
                self.health.publish_errors.fetch_add(1, Relaxed);
                tracing::error!(error = %e, items = env.items.len(), "envelope refused by the encoder; dropped");
            }
        }
    }

    async fn publish_reply(&mut self, reply: &Reply) {
        match protocol::encode(reply, &self.limits) {
            Ok(bytes) => {
                let topic = self.cfg.topics.topic(&self.cfg.gateway, Channel::Reply);
                if let Err(e) = self
                    .client
                    .publish(topic, QoS::AtLeastOnce, false, bytes)
                    .await
                {
                    tracing::error!(error = %e, command = %reply.id, "cannot publish a command reply");
                }
            }
            Err(e) => {
                tracing::error!(error = %e, command = %reply.id, "cannot encode a command reply")
            }
        }
    }

    async fn publish_heartbeat(&mut self) {
        let hb = Heartbeat {
            v: protocol::PROTOCOL_VERSION,
            gateway: self.cfg.gateway.clone(),
            boot: self.boot,
            sent_at: Timestamp::now(),
            clock: clock::state(self.cfg.clock),
            uptime_s: self.started.elapsed().as_secs(),
            cpu_temp_c: crate::sysinfo::cpu_temp_c(),
            mem_used_bytes: crate::sysinfo::rss_bytes(),
            disk_free_bytes: None,
            spool: Default::default(),
            evidence: self.health.evidence_stats(),
            devices: self.health.links(),
        };
        match protocol::encode(&hb, &self.limits) {
            Ok(bytes) => {
                let topic = self.cfg.topics.topic(&self.cfg.gateway, Channel::Status);
                // Heartbeats are not worth queueing behind data while the link is down.
                let _ = self
                    .client
                    .try_publish(topic, QoS::AtMostOnce, false, bytes);
            }
            Err(e) => tracing::error!(error = %e, "cannot encode heartbeat"),
        }
    }
}

/// What the connection driver needs besides the event loop.
struct Link {
    state_topic: String,
    online: Vec<u8>,
    cmd_topic: String,
    commands: mpsc::Sender<Command>,
    health: Arc<Health>,
}

/// Polls the MQTT event loop: reconnects with backoff, re-announces presence and subscribes to the
/// command topic on every connect, hands commands on, and at shutdown keeps going until everything
/// queued is acknowledged (or the flush deadline passes).
async fn drive(
    mut eventloop: EventLoop,
    client: AsyncClient,
    link: Link,
    mut done: tokio::sync::oneshot::Receiver<()>,
) {
    let mut failures = 0u32;
    let mut stopping: Option<tokio::time::Instant> = None;
    let limits = Limits::default();
    loop {
        if let Some(deadline) = stopping {
            let idle = eventloop.state.inflight() == 0 && eventloop.pending.is_empty();
            if idle || tokio::time::Instant::now() >= deadline {
                if !idle {
                    tracing::warn!(
                        inflight = eventloop.state.inflight(),
                        "flush deadline passed with messages unacknowledged"
                    );
                }
                let _ = client.try_disconnect();
                let _ = tokio::time::timeout(Duration::from_millis(500), eventloop.poll()).await;
                return;
            }
        }
        let ev = tokio::select! {
            ev = eventloop.poll() => ev,
            _ = &mut done, if stopping.is_none() => {
                stopping = Some(tokio::time::Instant::now() + FLUSH_DEADLINE);
                continue;
            }
            _ = tokio::time::sleep(Duration::from_millis(100)), if stopping.is_some() => continue,
        };
        match ev {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                if failures > 0 {
                    tracing::info!(after_failures = failures, "uplink reconnected");
                } else {
                    tracing::info!("uplink connected");
                }
                failures = 0;
                let _ = client.try_publish(
                    link.state_topic.clone(),
                    QoS::AtLeastOnce,
                    true,
                    link.online.clone(),
                );
                let _ = client.try_subscribe(link.cmd_topic.clone(), QoS::AtLeastOnce);
            }
            Ok(Event::Incoming(Packet::Publish(p))) if p.topic == link.cmd_topic => {
                match protocol::decode::<Command>(&p.payload, &limits) {
                    Ok(cmd) => {
                        if link.commands.try_send(cmd).is_err() {
                            tracing::warn!(
                                "command queue full; command dropped (the hub sees no reply)"
                            );
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "malformed command ignored"),
                }
            }
            Ok(_) => {}
            Err(e) => {
                failures += 1;
                link.health.publish_errors.fetch_add(1, Relaxed);
                if failures == 1 {
                    tracing::warn!(error = %e, "uplink lost the broker; reconnecting");
                }
                if stopping.is_some_and(|d| tokio::time::Instant::now() >= d) {
                    return;
                }
                tokio::time::sleep(protocol::reconnect::delay(failures, fastrand::f64())).await;
            }
        }
    }
}
