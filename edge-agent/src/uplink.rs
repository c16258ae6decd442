//! The uplink: batches items into numbered envelopes, writes each to the spool, and publishes from
//! the spool to the hub over MQTT (QoS 1); a record leaves the spool only when the broker has
//! acknowledged it. Also the retained presence message on every connect, the `offline` last will,
//! the heartbeat, and the command subscription.
//!
//! ```text
//! pollers, sources ─items─▶ batch ─▶ spool (bulk: synced each second; events: synced at once)
//!                                      └─▶ publish (live first, backlog oldest-first at a set rate)
//!                                             ─▶ broker ─PUBACK─▶ spool.ack
//! ```
//! Two tasks: the *connection driver* only polls rumqttc's event loop (so a slow connect is never
//! interrupted) and forwards what happens; this task owns the spool and does all publishing. Each
//! publish is tagged in order; rumqttc reports `Outgoing::Publish(pkid)` in the same order, which ties
//! each packet id to its spool record, and the PUBACK for that id acknowledges the record.
//!
//! When the connection is lost, the driver waits for this task to stop publishing, then discards
//! everything rumqttc still holds (the session is clean) and reconnects; every unacknowledged record is
//! sent again from the spool. A watchdog forces a reconnect when acknowledgements stall. The hub's dedupe
//! on (gateway, boot, seq) makes the resulting at-least-once delivery store each envelope once.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use protocol::{
    BootId, Channel, Command, DeviceInfo, EncodeError, Envelope, GatewayId, Heartbeat, Item,
    Limits, Presence, PresenceState, Reply, Timestamp, TopicScheme,
};
use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS};
use tokio::sync::{mpsc, oneshot};

use crate::clock::{self, ClockSource};
use crate::health::Health;
use crate::spool::{Class, Spool};

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
    /// Where the spool lives; the heartbeat reports the free space there.
    pub data_dir: Option<std::path::PathBuf>,
    /// TLS to the broker (`mqtts://`).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Backlog (data spooled before the current connection) is sent at most this fast, in items
    /// per second, so live data keeps flowing after a long outage.
    pub replay_items_per_s: u32,
    /// With publishes unacknowledged this long, the connection is dropped and made again.
    pub ack_timeout: Duration,
    /// The gateway's message key: every publish is signed with it, and commands must be signed
    /// with it. Without one, messages go unsigned and unsigned commands are taken.
    pub key: Option<protocol::auth::Key>,
}

/// How long the final flush may take at shutdown before the agent gives up waiting for the broker.
pub const FLUSH_DEADLINE: Duration = Duration::from_secs(5);
/// Spool records published and not yet acknowledged, at most.
const WINDOW: usize = 32;
/// rumqttc's inflight limit; kept well above `WINDOW` so packet ids never collide.
const MQTT_INFLIGHT: u16 = 100;
/// How long events may wait to be batched together.
const EVENT_BATCH_WAIT: Duration = Duration::from_millis(20);

/// An event whose producer waits until it is on disk (camera captures answer the camera then).
#[derive(Debug)]
pub struct DurableEvent {
    pub item: Item,
    pub done: oneshot::Sender<Result<(), String>>,
}

/// What flows into and out of the uplink besides the spool.
#[derive(Debug)]
pub struct Channels {
    /// Readings and events from pollers, sources and rules.
    pub items: mpsc::Receiver<Item>,
    /// Events whose producers wait until they are on disk.
    pub durable: mpsc::Receiver<DurableEvent>,
    /// Commands from the hub, to the router.
    pub commands: mpsc::Sender<Command>,
    /// Replies to publish.
    pub replies: mpsc::Receiver<Reply>,
    /// Commands the local rules issued (their replies are not published).
    pub local_commands: crate::rules::LocalCommands,
    /// Configuration pushes from the hub (signature checked), to the fleet supervisor.
    pub configs: mpsc::Sender<protocol::ConfigPush>,
}

/// The spool, shared with the heartbeat and the status endpoint.
pub type SharedSpool = Arc<Mutex<Spool>>;

/// What the connection driver reports, in the order it happened.
#[derive(Debug)]
enum LinkEvent {
    Mqtt(Event),
    /// The connection is gone; the driver waits for [`Control::Resume`] before reconnecting.
    Lost(String),
}

#[derive(Debug)]
enum Control {
    /// Discard what rumqttc holds, wait this long, reconnect.
    Resume(Duration),
    /// Drop the connection now (watchdog); the driver then reports `Lost`.
    Reset,
    /// Disconnect cleanly and stop.
    Stop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tag {
    Record(Class, u64),
    Other,
}

/// Per class: where the live stream and the backlog have got to on this connection.
#[derive(Debug, Clone, Copy, Default)]
struct Cursor {
    /// Records with ids from here on were spooled during this connection: live data.
    live_from: u64,
    live_next: u64,
    backlog_next: u64,
}

struct Uplink {
    cfg: UplinkConfig,
    local_commands: crate::rules::LocalCommands,
    client: AsyncClient,
    control: mpsc::UnboundedSender<Control>,
    spool: SharedSpool,
    health: Arc<Health>,
    boot: BootId,
    seq: u64,
    limits: Limits,
    started: Instant,
    connected: bool,
    failures: u32,
    tags: VecDeque<Tag>,
    inflight: HashMap<u16, (Class, u64)>,
    cursors: [Cursor; 2],
    /// Backlog items that may still be sent this second.
    tokens: f64,
    tokens_at: Instant,
    last_ack: Instant,
    presence_online: Vec<u8>,
    state_topic: String,
    cmd_topic: String,
    config_topic: String,
    up_topic: String,
}

fn ci(c: Class) -> usize {
    match c {
        Class::Event => 0,
        Class::Bulk => 1,
    }
}

/// Runs the uplink until `items` and `durable` close, then flushes and disconnects.
pub async fn run(cfg: UplinkConfig, spool: SharedSpool, health: Arc<Health>, ch: Channels) {
    let Channels {
        mut items,
        mut durable,
        commands,
        mut replies,
        local_commands,
        configs,
    } = ch;
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
    opts.set_clean_session(true);
    opts.set_inflight(MQTT_INFLIGHT);
    opts.set_max_packet_size(limits.max_payload + 4096, limits.max_payload + 4096);
    opts.set_last_will(LastWill::new(
        state_topic.clone(),
        sign(cfg.key.as_ref(), &state_topic, offline.clone()),
        QoS::AtLeastOnce,
        true,
    ));
    if let (Some(u), Some(p)) = (&cfg.username, &cfg.password) {
        opts.set_credentials(u.clone(), p.clone());
    }
    if let Some(tls) = &cfg.tls {
        opts.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(tls.clone()),
        ));
    }
    let (client, eventloop) = AsyncClient::new(opts, 256);
    let (link_tx, mut link_rx) = mpsc::unbounded_channel();
    let (control_tx, control_rx) = mpsc::unbounded_channel();
    let cmd_topic = cfg.topics.topic(&cfg.gateway, Channel::Cmd);
    let config_topic = cfg.topics.topic(&cfg.gateway, Channel::Config);
    let driver = tokio::spawn(drive(
        eventloop,
        client.clone(),
        link_tx,
        control_rx,
        Inbox {
            topic: cmd_topic.clone(),
            config_topic: config_topic.clone(),
            commands,
            configs,
            key: cfg.key.clone(),
            health: health.clone(),
        },
    ));

    let up_topic = cfg.topics.topic(&cfg.gateway, Channel::Up);
    let mut u = Uplink {
        local_commands,
        client,
        control: control_tx,
        spool,
        health,
        boot,
        seq: 0,
        limits,
        started: Instant::now(),
        connected: false,
        failures: 0,
        tags: VecDeque::new(),
        inflight: HashMap::new(),
        cursors: [Cursor::default(); 2],
        tokens: 0.0,
        tokens_at: Instant::now(),
        last_ack: Instant::now(),
        presence_online: online,
        state_topic: state_topic.clone(),
        cmd_topic,
        config_topic,
        up_topic,
        cfg,
    };
    let _ = u.health.boot.set(boot);
    let _ = u.health.gateway.set(u.cfg.gateway.clone());
    u.report_spool();

    let mut batch: Vec<Item> = Vec::with_capacity(u.cfg.batch_max_items);
    let mut deadline: Option<tokio::time::Instant> = None;
    let mut events: Vec<Item> = Vec::new();
    let mut waiters: Vec<oneshot::Sender<Result<(), String>>> = Vec::new();
    let mut event_deadline: Option<tokio::time::Instant> = None;
    let health = u.health.clone();
    let mut heartbeat = tokio::time::interval(u.cfg.heartbeat);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sync = tokio::time::interval(Duration::from_secs(1));
    sync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut items_open, mut durable_open) = (true, true);
    let far = || tokio::time::Instant::now() + Duration::from_secs(3600);
    while items_open || durable_open {
        tokio::select! {
            item = items.recv(), if items_open => match item {
                Some(Item::Event(e)) => {
                    if events.is_empty() {
                        event_deadline = Some(tokio::time::Instant::now() + EVENT_BATCH_WAIT);
                    }
                    events.push(Item::Event(e));
                }
                Some(item) => {
                    if batch.is_empty() {
                        deadline = Some(tokio::time::Instant::now() + u.cfg.batch_max_wait);
                    }
                    batch.push(item);
                    // While the uplink is down, what arrives goes to disk at once (one write per
                    // burst of items, e.g. one poll), so even SIGKILL loses nothing already read;
                    // while it is up, items are batched (at most batch_max_wait of them in memory).
                    let outage = !u.connected;
                    if outage {
                        while batch.len() < u.cfg.batch_max_items {
                            match items.try_recv() {
                                Ok(Item::Event(e)) => events.push(Item::Event(e)),
                                Ok(more) => batch.push(more),
                                Err(_) => break,
                            }
                        }
                        if !events.is_empty() && event_deadline.is_none() {
                            event_deadline = Some(tokio::time::Instant::now());
                        }
                    }
                    if outage || batch.len() >= u.cfg.batch_max_items {
                        // Failures are logged and counted inside.
                        let _ = u.spool_batch(Class::Bulk, std::mem::take(&mut batch));
                        deadline = None;
                        u.pump();
                    }
                }
                None => items_open = false,
            },
            ev = durable.recv(), if durable_open => match ev {
                Some(DurableEvent { item, done }) => {
                    if events.is_empty() {
                        event_deadline = Some(tokio::time::Instant::now() + EVENT_BATCH_WAIT);
                    }
                    events.push(item);
                    waiters.push(done);
                }
                None => durable_open = false,
            },
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(far)), if deadline.is_some() => {
                let _ = u.spool_batch(Class::Bulk, std::mem::take(&mut batch)); // failures are logged and counted
                deadline = None;
                u.pump();
            }
            _ = tokio::time::sleep_until(event_deadline.unwrap_or_else(far)), if event_deadline.is_some() => {
                let result = u.spool_batch(Class::Event, std::mem::take(&mut events));
                for w in waiters.drain(..) {
                    let _ = w.send(result.clone());
                }
                event_deadline = None;
                u.pump();
            }
            Some(ev) = link_rx.recv() => u.on_link(ev),
            _ = sync.tick() => u.tick(),
            _ = heartbeat.tick() => u.publish_heartbeat(),
            () = health.heartbeat_now.notified() => u.publish_heartbeat(),
            Some(reply) = replies.recv() => u.publish_reply(&reply),
        }
    }
    // Producers have stopped: spool what is left, then give the broker until the deadline to
    // acknowledge what is live. Unacknowledged data stays in the spool for the next start.
    let result = u.spool_batch(Class::Event, events);
    for w in waiters {
        let _ = w.send(result.clone());
    }
    let _ = u.spool_batch(Class::Bulk, batch);
    u.sync_spool();
    let end = tokio::time::Instant::now() + FLUSH_DEADLINE;
    u.pump();
    while u.live_pending() && tokio::time::Instant::now() < end {
        tokio::select! {
            Some(ev) = link_rx.recv() => u.on_link(ev),
            _ = tokio::time::sleep_until(end) => break,
        }
    }
    if u.live_pending() {
        tracing::warn!(
            inflight = u.inflight.len(),
            "shutdown: unacknowledged data stays in the spool for the next start"
        );
    }
    u.sync_spool();
    // Mark the gateway offline on purpose (the last will is only for unclean ends), then disconnect.
    if u.connected {
        u.send(
            Tag::Other,
            u.state_topic.clone(),
            QoS::AtLeastOnce,
            true,
            offline,
        );
        let wait = tokio::time::Instant::now() + Duration::from_secs(1);
        while !u.tags.is_empty() && tokio::time::Instant::now() < wait {
            tokio::select! {
                Some(ev) = link_rx.recv() => u.on_link(ev),
                _ = tokio::time::sleep_until(wait) => break,
            }
        }
    }
    let _ = u.control.send(Control::Stop);
    let _ = tokio::time::timeout(Duration::from_secs(2), driver).await;
    let h = &u.health;
    let f = lock(&u.spool).figures(Timestamp::now().unix_millis());
    tracing::info!(
        envelopes = u.seq,
        published = h.envelopes_published.load(Relaxed),
        readings = h.readings_collected.load(Relaxed),
        publish_errors = h.publish_errors.load(Relaxed),
        source_rejected = h.source_rejected.load(Relaxed),
        spool_depth = f.depth,
        spool_dropped_items = f.dropped_items,
        "uplink stopped"
    );
}

fn lock(s: &SharedSpool) -> std::sync::MutexGuard<'_, Spool> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

impl Uplink {
    /// Encodes `items` as envelopes and writes them to the spool (events are synced before this
    /// returns). `Err` only when nothing could be kept.
    fn spool_batch(&mut self, class: Class, items: Vec<Item>) -> Result<(), String> {
        if items.is_empty() {
            return Ok(());
        }
        let mut out = Vec::new();
        self.encode(items, &mut out);
        let mut failed = None;
        let now = Timestamp::now().unix_millis();
        for (bytes, n) in out {
            let r = lock(&self.spool).append(class, &bytes, n, now);
            if let Err(e) = r {
                self.health.lost_items.fetch_add(u64::from(n), Relaxed);
                tracing::error!(error = %e, class = class.as_str(), items = n, "cannot write to the spool; data lost");
                failed = Some(format!("cannot write to the spool: {e}"));
            }
        }
        failed.map_or(Ok(()), Err)
    }

    /// One or more encoded envelopes (split when one would be too large), with their item counts.
    fn encode(&mut self, items: Vec<Item>, out: &mut Vec<(Vec<u8>, u32)>) {
        let mut env = Envelope {
            v: protocol::PROTOCOL_VERSION,
            gateway: self.cfg.gateway.clone(),
            boot: self.boot,
            seq: self.seq,
            sent_at: Timestamp::now(),
            clock: clock::state(self.cfg.clock),
            items,
        };
        match protocol::encode(&env, &self.limits) {
            Ok(bytes) => {
                self.seq += 1;
                out.push((bytes, env.items.len() as u32));
            }
            Err(EncodeError::TooLarge { .. }) if env.items.len() > 1 => {
                let second = env.items.split_off(env.items.len() / 2);
                self.encode(env.items, out);
                self.encode(second, out);
            }
            Err(e) => {
                // Items are built from validated profiles, so this is a bug; count it, keep going.
                self.health.publish_errors.fetch_add(1, Relaxed);
                self.health
                    .lost_items
                    .fetch_add(env.items.len() as u64, Relaxed);
                tracing::error!(error = %e, items = env.items.len(), "envelope refused by the encoder; dropped");
            }
        }
    }

    fn sync_spool(&mut self) {
        if let Err(e) = lock(&self.spool).sync() {
            tracing::error!(error = %e, "cannot sync the spool");
        }
    }

    fn tick(&mut self) {
        self.sync_spool();
        self.report_spool();
        // Watchdog: publishes outstanding and no acknowledgement for too long.
        if self.connected
            && !self.inflight.is_empty()
            && self.last_ack.elapsed() > self.cfg.ack_timeout
        {
            tracing::warn!(
                inflight = self.inflight.len(),
                "no acknowledgement for {:?}; forcing a reconnect",
                self.cfg.ack_timeout
            );
            self.health.watchdog_resets.fetch_add(1, Relaxed);
            self.connected = false;
            let _ = self.control.send(Control::Reset);
        }
        self.pump();
    }

    fn report_spool(&self) {
        let f = lock(&self.spool).figures(Timestamp::now().unix_millis());
        self.health.set_spool(f);
        self.health.connected.store(self.connected, Relaxed);
        self.health.clock_synced.store(
            clock::state(self.cfg.clock) == protocol::ClockState::Synced,
            Relaxed,
        );
    }

    /// Publishes under a tag; `false` when the client queue is full (the caller retries later).
    fn send(&mut self, tag: Tag, topic: String, qos: QoS, retain: bool, payload: Vec<u8>) -> bool {
        let payload = sign(self.cfg.key.as_ref(), &topic, payload);
        self.tags.push_back(tag);
        match self.client.try_publish(topic, qos, retain, payload) {
            Ok(()) => true,
            Err(_) => {
                self.tags.pop_back();
                false
            }
        }
    }

    fn on_link(&mut self, ev: LinkEvent) {
        match ev {
            LinkEvent::Mqtt(Event::Incoming(Packet::ConnAck(_))) => {
                if self.failures > 0 {
                    tracing::info!(after_failures = self.failures, "uplink reconnected");
                } else {
                    tracing::info!("uplink connected");
                }
                self.failures = 0;
                self.connected = true;
                self.health.connected.store(true, Relaxed);
                self.health.connects.fetch_add(1, Relaxed);
                self.tags.clear();
                self.inflight.clear();
                self.last_ack = Instant::now();
                // Everything spooled before now is backlog; what comes next is live.
                let spool = lock(&self.spool);
                for c in Class::ALL {
                    let next = spool.next_id(c);
                    self.cursors[ci(c)] = Cursor {
                        live_from: next,
                        live_next: next,
                        backlog_next: 0,
                    };
                }
                drop(spool);
                self.tokens = f64::from(self.cfg.replay_items_per_s);
                self.tokens_at = Instant::now();
                let online = self.presence_online.clone();
                self.send(
                    Tag::Other,
                    self.state_topic.clone(),
                    QoS::AtLeastOnce,
                    true,
                    online,
                );
                // One SUBSCRIBE for both, so one SUBACK says whether the broker grants them.
                self.health.subscribed.store(false, Relaxed);
                let filters = [&self.cmd_topic, &self.config_topic]
                    .map(|t| rumqttc::SubscribeFilter::new(t.clone(), QoS::AtLeastOnce));
                let _ = self.client.try_subscribe_many(filters);
                // The hub learns the gateway's state (and configuration) at once, not a
                // heartbeat interval later.
                self.publish_heartbeat();
                self.pump();
            }
            LinkEvent::Mqtt(Event::Outgoing(Outgoing::Publish(pkid))) => {
                match self.tags.pop_front() {
                    Some(Tag::Record(c, id)) => {
                        self.inflight.insert(pkid, (c, id));
                    }
                    Some(Tag::Other) => {}
                    None => {
                        tracing::debug!(pkid, "publish without a tag (sent before a reconnect)")
                    }
                }
            }
            LinkEvent::Mqtt(Event::Incoming(Packet::PubAck(ack))) => {
                if let Some((c, id)) = self.inflight.remove(&ack.pkid) {
                    lock(&self.spool).ack(c, id);
                    self.health.envelopes_published.fetch_add(1, Relaxed);
                }
                self.last_ack = Instant::now();
                self.pump();
            }
            LinkEvent::Mqtt(Event::Incoming(Packet::SubAck(ack))) => {
                let granted = ack
                    .return_codes
                    .iter()
                    .all(|c| matches!(c, rumqttc::SubscribeReasonCode::Success(_)));
                if !granted {
                    tracing::error!(codes = ?ack.return_codes, "the broker refused the command or configuration subscription (ACL?): the hub cannot reach this gateway");
                }
                self.health.subscribed.store(granted, Relaxed);
            }
            LinkEvent::Mqtt(_) => {}
            LinkEvent::Lost(e) => {
                self.health.set_uplink_error(&e);
                self.failures += 1;
                self.health.publish_errors.fetch_add(1, Relaxed);
                if self.failures == 1 {
                    tracing::warn!(error = %e, "uplink lost the broker; reconnecting (data goes to the spool)");
                }
                self.connected = false;
                self.health.connected.store(false, Relaxed);
                self.health.subscribed.store(false, Relaxed);
                self.tags.clear();
                self.inflight.clear();
                let delay = if self.failures == 1 {
                    Duration::ZERO
                } else {
                    protocol::reconnect::delay(self.failures - 1, fastrand::f64())
                };
                let _ = self.control.send(Control::Resume(delay));
            }
        }
    }

    /// Whether data spooled during this connection is still unacknowledged, or anything is in flight.
    fn live_pending(&self) -> bool {
        if !self.inflight.is_empty() || !self.tags.is_empty() {
            return true;
        }
        let spool = lock(&self.spool);
        self.connected
            && Class::ALL.iter().any(|c| {
                spool
                    .next_unacked(*c, self.cursors[ci(*c)].live_from)
                    .is_some()
            })
    }

    /// Publishes spooled records while connected and the window has room: live records first, then
    /// backlog within the replay budget.
    fn pump(&mut self) {
        if !self.connected {
            return;
        }
        let now = Instant::now();
        let rate = f64::from(self.cfg.replay_items_per_s.max(1));
        self.tokens =
            (self.tokens + now.duration_since(self.tokens_at).as_secs_f64() * rate).min(rate);
        self.tokens_at = now;
        while self.inflight.len() + self.tags.len() < WINDOW {
            let Some((class, id, live)) = self.next_record() else {
                break;
            };
            let read = lock(&self.spool).read(class, id);
            let record = match read {
                Ok(Some(r)) => r,
                Ok(None) => {
                    self.advance(class, id, live);
                    continue;
                }
                Err(e) => {
                    tracing::error!(error = %e, id, "cannot read a spool record; skipped");
                    self.advance(class, id, live);
                    continue;
                }
            };
            if !live {
                self.tokens -= f64::from(record.items);
            }
            let payload = self.restamp(record.payload);
            if !self.send(
                Tag::Record(class, id),
                self.up_topic.clone(),
                QoS::AtLeastOnce,
                false,
                payload,
            ) {
                break;
            }
            self.advance(class, id, live);
        }
    }

    /// An envelope stamped by an unsynchronised clock is corrected at the hub by the difference
    /// between its `sentAt` and the hub's receive time, so `sentAt` must be the time it is really
    /// sent: re-stamp it when it waited in the spool, if the clock it was stamped by is still the
    /// one running (same boot, still unsynchronised). Otherwise the offset is unknown and the
    /// envelope goes as it was.
    fn restamp(&self, payload: Vec<u8>) -> Vec<u8> {
        const MARK: &[u8] = br#""clock":"unsynced""#;
        if !payload.windows(MARK.len()).any(|w| w == MARK)
            || clock::state(self.cfg.clock) != protocol::ClockState::Unsynced
        {
            return payload;
        }
        match protocol::decode::<Envelope>(&payload, &self.limits) {
            Ok(mut env) if env.boot == self.boot => {
                env.sent_at = Timestamp::now();
                protocol::encode(&env, &self.limits).unwrap_or(payload)
            }
            _ => payload,
        }
    }

    fn advance(&mut self, class: Class, id: u64, live: bool) {
        let c = &mut self.cursors[ci(class)];
        if live {
            c.live_next = id + 1;
        } else {
            c.backlog_next = id + 1;
        }
    }

    fn next_record(&self) -> Option<(Class, u64, bool)> {
        let spool = lock(&self.spool);
        for class in Class::ALL {
            let c = self.cursors[ci(class)];
            if let Some(id) = spool.next_unacked(class, c.live_next.max(c.live_from)) {
                return Some((class, id, true));
            }
        }
        if self.tokens <= 0.0 {
            return None;
        }
        for class in Class::ALL {
            let c = self.cursors[ci(class)];
            if let Some(id) = spool.next_unacked(class, c.backlog_next)
                && id < c.live_from
            {
                return Some((class, id, false));
            }
        }
        None
    }

    fn publish_reply(&mut self, reply: &Reply) {
        let local = self
            .local_commands
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&reply.id);
        if local {
            // The gateway's own rules issued it: the hub never asked.
            match reply.outcome {
                protocol::CommandOutcome::Ok => {
                    tracing::info!(device = %reply.device, command = %reply.id, "local rule action performed")
                }
                _ => {
                    tracing::error!(device = %reply.device, command = %reply.id, outcome = ?reply.outcome, detail = ?reply.detail, "local rule action failed")
                }
            }
            return;
        }
        match protocol::encode(reply, &self.limits) {
            Ok(bytes) => {
                let topic = self.cfg.topics.topic(&self.cfg.gateway, Channel::Reply);
                if !self.connected || !self.send(Tag::Other, topic, QoS::AtLeastOnce, false, bytes)
                {
                    tracing::warn!(command = %reply.id, "uplink down; command reply not sent");
                }
            }
            Err(e) => {
                tracing::error!(error = %e, command = %reply.id, "cannot encode a command reply")
            }
        }
    }

    fn publish_heartbeat(&mut self) {
        self.report_spool();
        let hb = Heartbeat {
            v: protocol::PROTOCOL_VERSION,
            gateway: self.cfg.gateway.clone(),
            boot: self.boot,
            sent_at: Timestamp::now(),
            clock: clock::state(self.cfg.clock),
            uptime_s: self.started.elapsed().as_secs(),
            cpu_temp_c: crate::sysinfo::cpu_temp_c(),
            mem_used_bytes: crate::sysinfo::rss_bytes(),
            disk_free_bytes: self
                .cfg
                .data_dir
                .as_deref()
                .and_then(crate::sysinfo::disk_free_bytes),
            spool: self.health.spool(),
            evidence: self.health.evidence_stats(),
            devices: self.health.links(),
            config: self.health.config(),
        };
        match protocol::encode(&hb, &self.limits) {
            Ok(bytes) => {
                // Heartbeats are not worth keeping while the link is down: the next one replaces it.
                if self.connected {
                    let topic = self.cfg.topics.topic(&self.cfg.gateway, Channel::Status);
                    self.send(Tag::Other, topic, QoS::AtMostOnce, false, bytes);
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot encode heartbeat"),
        }
    }
}

/// Where commands from the hub go, and what they are checked with.
struct Inbox {
    /// This gateway's command topic.
    topic: String,
    /// This gateway's configuration topic.
    config_topic: String,
    commands: mpsc::Sender<Command>,
    configs: mpsc::Sender<protocol::ConfigPush>,
    key: Option<protocol::auth::Key>,
    health: Arc<Health>,
}

/// Wraps a payload in its signature when the gateway has a key.
fn sign(key: Option<&protocol::auth::Key>, topic: &str, payload: Vec<u8>) -> Vec<u8> {
    match key {
        Some(k) => protocol::auth::seal(k, topic, &payload),
        None => payload,
    }
}

/// The command inside a payload, if the hub sent it: signed with this gateway's key when it has
/// one. Without a key only unsigned commands can be taken (a signed one cannot be checked). Read
/// strictly: commands are few, and a refused one is reported with its exact reason.
fn command_bytes<'a>(
    payload: &'a [u8],
    key: Option<&protocol::auth::Key>,
    topic: &str,
) -> Result<&'a [u8], String> {
    let opened = protocol::auth::open_strict(payload).map_err(|e| e.to_string())?;
    match (key, opened.kid()) {
        (None, None) => Ok(opened.msg()),
        (None, Some(kid)) => Err(format!(
            "signed with key {kid}, but this gateway has no key_file"
        )),
        (Some(_), None) => Err("not signed, and this gateway has a key".into()),
        (Some(k), Some(kid)) if *kid != k.id => Err(format!(
            "signed with key {kid}; this gateway's key is {}",
            k.id
        )),
        (Some(k), Some(_)) => {
            opened.verify(k, topic).map_err(|e| e.to_string())?;
            Ok(opened.msg())
        }
    }
}

/// Why a message on a hub → gateway topic is not taken.
enum NotTaken {
    /// Not signed by the hub with this gateway's key.
    Forged(String),
    Malformed(protocol::DecodeError),
}

/// A message the hub sent on `topic`: its signature checked, then decoded and validated.
fn from_hub<T: protocol::codec::Message>(
    payload: &[u8],
    key: Option<&protocol::auth::Key>,
    topic: &str,
    limits: &Limits,
) -> Result<T, NotTaken> {
    let msg = command_bytes(payload, key, topic).map_err(NotTaken::Forged)?;
    protocol::decode::<T>(msg, limits).map_err(NotTaken::Malformed)
}

/// The message, or `None` with the refusal counted (forged) or logged (malformed).
fn inbound<T>(r: Result<T, NotTaken>, health: &Health, what: &str) -> Option<T> {
    match r {
        Ok(m) => Some(m),
        Err(NotTaken::Forged(reason)) => {
            health.commands_refused.fetch_add(1, Relaxed);
            tracing::warn!(%reason, "{what} refused: not from the hub");
            None
        }
        Err(NotTaken::Malformed(e)) => {
            tracing::warn!(error = %e, "malformed {what} ignored");
            None
        }
    }
}

/// Polls the MQTT event loop and forwards what happens. Never interrupted while connecting. On a
/// lost connection it reports `Lost` and waits for [`Control::Resume`]: by then the uplink has stopped
/// publishing, so discarding everything rumqttc holds discards exactly the publishes the uplink
/// forgot (they are sent again from the spool).
async fn drive(
    mut eventloop: EventLoop,
    client: AsyncClient,
    events: mpsc::UnboundedSender<LinkEvent>,
    mut control: mpsc::UnboundedReceiver<Control>,
    inbox: Inbox,
) {
    let Inbox {
        topic: cmd_topic,
        config_topic,
        commands,
        configs,
        key,
        health,
    } = inbox;
    let limits = Limits::default();
    let discard = |el: &mut EventLoop| {
        el.clean();
        el.pending.clear();
    };
    loop {
        let ev = tokio::select! {
            ev = eventloop.poll() => ev.map_err(|e| e.to_string()),
            c = control.recv() => match c {
                Some(Control::Reset) => {
                    discard(&mut eventloop);
                    Err("no acknowledgements; connection dropped by the watchdog".to_owned())
                }
                Some(Control::Stop) | None => {
                    let _ = client.try_disconnect();
                    let _ = tokio::time::timeout(Duration::from_millis(500), eventloop.poll()).await;
                    return;
                }
                Some(Control::Resume(_)) => continue,
            },
        };
        match ev {
            Ok(Event::Incoming(Packet::Publish(p))) if p.topic == cmd_topic => {
                let from_hub = from_hub::<Command>(&p.payload, key.as_ref(), &p.topic, &limits);
                if let Some(cmd) = inbound(from_hub, &health, "command")
                    && commands.try_send(cmd).is_err()
                {
                    tracing::warn!("command queue full; command dropped (the hub sees no reply)");
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) if p.topic == config_topic => {
                // A configuration can point the gateway anywhere: unlike a command, it is taken
                // only signed, so a gateway without a key cannot be configured remotely.
                let from_hub = match &key {
                    Some(k) => {
                        from_hub::<protocol::ConfigPush>(&p.payload, Some(k), &p.topic, &limits)
                    }
                    None => Err(NotTaken::Forged(
                        "configuration pushes must be signed, and this gateway has no key_file"
                            .into(),
                    )),
                };
                if let Some(push) = inbound(from_hub, &health, "configuration push")
                    && configs.try_send(push).is_err()
                {
                    tracing::warn!(
                        "a configuration is being applied; push ignored (the hub pushes again)"
                    );
                }
            }
            Ok(ev) => {
                if events.send(LinkEvent::Mqtt(ev)).is_err() {
                    return;
                }
            }
            Err(e) => {
                if events.send(LinkEvent::Lost(e)).is_err() {
                    return;
                }
                // Wait until the uplink has stopped publishing, then drop whatever it queued.
                let delay = loop {
                    match control.recv().await {
                        Some(Control::Resume(d)) => break d,
                        Some(Control::Reset) => continue,
                        Some(Control::Stop) | None => return,
                    }
                };
                discard(&mut eventloop);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    c = control.recv() => if matches!(c, Some(Control::Stop) | None) { return },
                }
            }
        }
    }
}
