//! MQTT ingest: subscribes to every gateway's topics, decodes and checks each message, and hands it to
//! the store; acknowledges it to the broker only once the store has committed it.
//!
//! The same code serves the embedded broker and an external one (Mosquitto, EMQX): the hub is always an
//! ordinary MQTT client with a persistent session and manual acknowledgements, so a message the hub
//! has not stored is redelivered after a hub or connection restart, and deduplicated by the store.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::time::Duration;

use futures_util::StreamExt;
use protocol::{
    Channel, ClockState, Envelope, GatewayId, Heartbeat, Item, Limits, Presence, Reply, Timestamp,
    TopicScheme,
};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::keys::{KeyRing, Verdict};
use crate::metrics::Metrics;
use crate::store::{Ack, Store, WriteOp};

/// Messages being verified and decoded at once (on the runtime's worker threads); more wait in the
/// broker connection.
const DECODING_MAX: usize = 64;

/// Events the broker connection's driver hands on ahead of the session.
const EVENTS: usize = 16;

/// Room in the broker connection's request queue (acknowledgements, subscriptions, commands).
/// The acknowledgements the session owes are bounded only by what the broker sends before it
/// hears back: Mosquitto 2.0.11, configured with `max_inflight_messages 100`, had more than 4,096
/// messages unacknowledged with the hub in a 10-million-reading run, and rumqttc's poll takes one
/// request per turn while it reads up to ten packets. So the queue is roomy, and what does not
/// fit waits in [`Requests`] instead of being dropped.
const REQUESTS: usize = 8192;

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
    /// Per-gateway message rate limit; `None`: none.
    pub rate_limit: Option<RateLimit>,
}

/// The topic filters of every gateway's messages to the hub.
pub fn all_filters(topics: &TopicScheme) -> Vec<String> {
    CHANNELS.iter().map(|c| topics.filter_all(*c)).collect()
}

/// The channels the hub takes in.
const CHANNELS: [Channel; 4] = [Channel::Up, Channel::State, Channel::Status, Channel::Reply];

/// The topics of these gateways' messages to the hub (a cluster partition's session).
pub fn gateway_filters(topics: &TopicScheme, gateways: &[String]) -> Vec<String> {
    gateways
        .iter()
        .filter_map(|g| GatewayId::new(g.as_str()).ok())
        .flat_map(|g| CHANNELS.iter().map(move |c| topics.topic(&g, *c)))
        .collect()
}

/// This process in the cluster, as ingest sees it.
#[derive(Debug)]
pub struct Member {
    /// This process's name.
    pub hub: String,
    /// The partitions held.
    pub own: crate::cluster::Ownership,
    /// Where ingest records the partitions whose sessions run.
    pub serving: crate::cluster::Serving,
}

/// A cluster hub's ingest (see [`crate::cluster`]): one session per partition held, whose client
/// id is the partition's (`<client-id>-pNN`), subscribed to that partition's gateways; and one
/// session of this process's own (`<client-id>-<hub>`) that publishes commands. A partition no
/// longer held has its session stopped (what it took is stored and acknowledged first; what it
/// had not acknowledged the broker gives to the next holder).
pub async fn run_partitions(
    cfg: IngestConfig,
    member: Member,
    store: Store,
    metrics: Arc<Metrics>,
    outgoing: mpsc::Receiver<Outgoing>,
    shutdown: CancellationToken,
) {
    let Member {
        hub,
        mut own,
        serving,
    } = member;
    let serving = |p: u32, running: bool| {
        let mut set = serving.lock().unwrap_or_else(|e| e.into_inner());
        if running {
            set.insert(p);
        } else {
            set.remove(&p);
        }
    };
    let base = cfg.client_id.clone();
    let commands = IngestConfig {
        client_id: format!("{base}-{hub}"),
        ..cfg.clone()
    };
    let (_none_tx, none) = tokio::sync::watch::channel(Vec::new());
    let commands = tokio::spawn(session(
        commands,
        store.clone(),
        metrics.clone(),
        Some(outgoing),
        none,
        shutdown.clone(),
    ));
    type Running = (
        CancellationToken,
        tokio::sync::watch::Sender<Vec<String>>,
        tokio::task::JoinHandle<()>,
    );
    let mut running: std::collections::BTreeMap<u32, Running> = Default::default();
    let mut watching = true;
    loop {
        let owned = own.borrow_and_update().clone();
        // Past the leases' safe time (the supervisor could not renew): serve nothing.
        let serve = owned.serve_now();
        metrics.partitions_served.store(serve.len() as u64, Relaxed);
        if serve.is_empty() && !owned.parts.is_empty() {
            tracing::warn!("leases not renewed in time: ingest of every partition stops");
        }
        let gone: Vec<u32> = running
            .keys()
            .filter(|p| !serve.contains(p))
            .copied()
            .collect();
        // All stopped at once (each takes what it handed to the store to the end first).
        let stopping: Vec<_> = gone
            .iter()
            .filter_map(|p| running.remove(p).map(|r| (*p, r)))
            .map(|(p, (stop, _, handle))| {
                stop.cancel();
                async move {
                    let _ = handle.await;
                    p
                }
            })
            .collect();
        for p in futures_util::future::join_all(stopping).await {
            serving(p, false);
            tracing::info!(partition = p, "ingest session of the partition stopped");
        }
        for &p in &serve {
            let filters = gateway_filters(&cfg.topics, &owned.gateways_of(p));
            if let Some((_, tx, _)) = running.get(&p) {
                tx.send_if_modified(|cur| {
                    let changed = *cur != filters;
                    if changed {
                        *cur = filters.clone();
                    }
                    changed
                });
                continue;
            }
            let (tx, rx) = tokio::sync::watch::channel(filters);
            let stop = shutdown.child_token();
            let session_cfg = IngestConfig {
                client_id: format!("{base}-p{p:02}"),
                ..cfg.clone()
            };
            let handle = tokio::spawn(session(
                session_cfg,
                store.clone(),
                metrics.clone(),
                None,
                rx,
                stop.clone(),
            ));
            tracing::info!(partition = p, "ingest session of the partition started");
            serving(p, true);
            running.insert(p, (stop, tx, handle));
        }
        let expiry = owned.valid_until.filter(|_| !serve.is_empty());
        tokio::select! {
            _ = shutdown.cancelled() => break,
            changed = own.changed(), if watching => watching = changed.is_ok(),
            _ = async { match expiry {
                Some(v) => tokio::time::sleep_until(v.into()).await,
                None => std::future::pending().await,
            } } => {}
        }
    }
    for (_, (_, _, handle)) in running {
        let _ = handle.await;
    }
    metrics.partitions_served.store(0, Relaxed);
    let _ = commands.await;
}

/// A cluster hub's live feed of the gateways it does not hold: while someone listens to this
/// process's `/api/v1/stream`, a session of its own (`<client-id>-<hub>-live`, QoS 0, nothing kept
/// by the broker) takes in every gateway's messages, checks and decodes them as ingest does, and
/// puts those of other processes' partitions on the feed. Nothing is stored here: the partition's
/// holder stores it. Between a change of partitions and this process noticing it, an item may
/// show twice or not at all on this feed; the store is not affected.
pub async fn live_session(
    cfg: IngestConfig,
    hub: String,
    live: crate::live::Live,
    own: crate::cluster::Ownership,
    shutdown: CancellationToken,
) {
    let mut opts = options(&cfg, format!("{}-{hub}-live", cfg.client_id));
    opts.set_clean_session(true);
    let (client, eventloop) = AsyncClient::new(opts, 64);
    // QoS 0: nothing to acknowledge, so no count of lost connections is needed.
    let (mut events, driver) = drive(eventloop, Arc::default());
    let filters = all_filters(&cfg.topics);
    // Counts of this session's rejects would count the holder's messages twice: kept apart.
    let uncounted = Metrics::default();
    let mut subscribed = false;
    let mut connected = false;
    let mut failures = 0u32;
    let mut check = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = check.tick() => {
                let wanted = live.wanted();
                if connected && wanted != subscribed {
                    for f in &filters {
                        let r = if wanted {
                            client.try_subscribe(f.clone(), QoS::AtMostOnce)
                        } else {
                            client.try_unsubscribe(f.clone())
                        };
                        if let Err(e) = r {
                            tracing::warn!(error = %e, "live feed session: cannot (un)subscribe");
                        }
                    }
                    subscribed = wanted;
                }
            }
            ev = events.recv() => match ev {
                None => break,
                Some(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                    failures = 0;
                    connected = true;
                    // A clean session has no subscriptions: the next check makes them.
                    subscribed = false;
                }
                Some(Ok(Event::Incoming(Packet::Publish(p)))) => {
                    let Ok((gateway, _)) = cfg.topics.parse(&p.topic) else { continue };
                    if own.borrow().owns(gateway.as_str()) {
                        continue;
                    }
                    let mut authenticated = None;
                    match classify(&cfg, &p, &uncounted, &mut authenticated) {
                        Some(WriteOp::Envelope { env, .. }) => live.envelope(&env),
                        Some(WriteOp::Presence { presence, .. }) => live.presence(&presence),
                        Some(WriteOp::Reply { reply, .. }) => live.reply(&reply),
                        _ => {}
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    connected = false;
                    failures += 1;
                    if failures == 1 {
                        tracing::warn!(error = %e, "live feed session lost the broker; reconnecting");
                    }
                }
            }
        }
    }
    leave(&client, &mut events, driver).await;
}

/// One session, on everything (the only hub), until `shutdown` is cancelled; it also publishes
/// the hub's commands.
pub async fn run(
    cfg: IngestConfig,
    store: Store,
    metrics: Arc<Metrics>,
    outgoing: mpsc::Receiver<Outgoing>,
    shutdown: CancellationToken,
) {
    let filters = all_filters(&cfg.topics);
    let (_keep, filters) = tokio::sync::watch::channel(filters);
    session(cfg, store, metrics, Some(outgoing), filters, shutdown).await
}

/// Runs one MQTT session subscribed to `filters` (as they change) until `shutdown` is cancelled;
/// publishes `outgoing` if given. Connection failures are retried with backoff, never fatal.
pub async fn session(
    cfg: IngestConfig,
    store: Store,
    metrics: Arc<Metrics>,
    mut outgoing: Option<mpsc::Receiver<Outgoing>>,
    mut filter_rx: tokio::sync::watch::Receiver<Vec<String>>,
    shutdown: CancellationToken,
) {
    // The session that publishes (the only hub's, or a cluster hub's own) says whether ingest is
    // ready (`/healthz`); partition sessions come and go with the partitions held.
    let report_ready = outgoing.is_some();
    // A partition session counts itself in hub_cluster_partition_sessions_connected.
    let mut counted = false;
    let count = |on: bool, counted: &mut bool| {
        if !report_ready && on != *counted {
            *counted = on;
            if on {
                metrics.partition_sessions_connected.fetch_add(1, Relaxed);
            } else {
                metrics.partition_sessions_connected.fetch_sub(1, Relaxed);
            }
        }
    };
    let mut in_flight = 0usize;
    let mut opts = options(&cfg, cfg.client_id.clone());
    opts.set_clean_session(false);
    opts.set_manual_acks(true);
    let (client, eventloop) = AsyncClient::new(opts, REQUESTS);
    let connection = Arc::new(AtomicU64::new(0));
    let (mut events, driver) = drive(eventloop, connection.clone());
    // The connection the events being handled came on (the driver's count of lost connections,
    // as of the event: it counts ahead of the session).
    let mut came_on = 0u64;
    let (ack_tx, mut ack_rx) = mpsc::unbounded_channel::<Owed>();
    let mut requests = Requests::default();
    let mut retry = tokio::time::interval(REQUEST_RETRY);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut filters: Vec<String> = filter_rx.borrow_and_update().clone();
    let mut failures = 0u32;
    let mut limiter = RateLimiter::new(cfg.rate_limit);
    let cfg = Arc::new(cfg);
    let mut decoding = futures_util::stream::FuturesOrdered::new();
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
            Ok(()) = filter_rx.changed() => {
                // New gateways in this session's partition, or some gone.
                let now = filter_rx.borrow_and_update().clone();
                let subscribe: Vec<_> = now.iter().filter(|f| !filters.contains(f)).cloned().collect();
                let unsubscribe: Vec<_> = filters.iter().filter(|f| !now.contains(f)).cloned().collect();
                for f in subscribe {
                    requests.push(Request::Subscribe(f));
                }
                for f in unsubscribe {
                    requests.push(Request::Unsubscribe(f));
                }
                requests.send(&client, &metrics, connection.load(SeqCst));
                filters = now;
            }
            // While requests wait for room, commands wait in their channel (the API's backpressure).
            Some(out) = async { match outgoing.as_mut() { Some(o) => o.recv().await, None => std::future::pending().await } }, if !requests.waiting() => {
                // Commands to gateways, signed with the gateway's key (QoS 1; rumqttc keeps them
                // while the broker is away).
                let payload = match cfg.topics.parse(&out.topic).ok().and_then(|(gw, _)| cfg.keys.signing_key(gw.as_str())) {
                    Some(key) => protocol::auth::seal(&key, &out.topic, &out.payload),
                    None => out.payload,
                };
                requests.push(Request::Command { topic: out.topic, payload });
                requests.send(&client, &metrics, connection.load(SeqCst));
            }
            Some(owed) = ack_rx.recv() => {
                in_flight -= 1;
                requests.push(Request::Ack(owed));
                while let Ok(owed) = ack_rx.try_recv() {
                    in_flight -= 1;
                    requests.push(Request::Ack(owed));
                }
                requests.send(&client, &metrics, connection.load(SeqCst));
            }
            _ = retry.tick(), if requests.waiting() => requests.send(&client, &metrics, connection.load(SeqCst)),
            Some(done) = decoding.next(), if !decoding.is_empty() => {
                let Ok((p, op, authenticated, on)) = done else {
                    tracing::error!("a message's decoding panicked; ingest stops (the broker redelivers it)");
                    break;
                };
                let op = limit(op, authenticated, &p, &cfg, &metrics, &mut limiter);
                let needs_ack = p.qos != QoS::AtMostOnce;
                let tx = ack_tx.clone();
                // Only what the acknowledgement needs is kept until the commit, not the payload.
                let owed = Owed { connection: on, pkid: p.pkid, qos: p.qos };
                let ack: Option<Ack> = needs_ack.then(|| Box::new(move || { let _ = tx.send(owed); }) as Ack);
                // Nothing to store still goes through the store's queue, so that every
                // acknowledgement leaves in the order the messages came.
                let op = match op {
                    Some(op) => op,
                    None if ack.is_none() => continue,
                    None => WriteOp::Skip,
                };
                let acked = ack.is_some();
                if store.write(op, ack).await.is_err() {
                    tracing::error!("store closed; ingest stops");
                    break;
                }
                in_flight += usize::from(acked);
            }
            ev = events.recv(), if decoding.len() < DECODING_MAX => match ev {
                None => break,
                Some(Ok(Event::Incoming(Packet::ConnAck(ack)))) => {
                    failures = 0;
                    metrics.mqtt_connections.fetch_add(1, Relaxed);
                    tracing::info!(host = %cfg.host, port = cfg.port, client_id = %cfg.client_id, session_present = ack.session_present, "ingest connected to broker");
                    if filters.is_empty() && report_ready {
                        metrics.ingest_ready.store(true, Relaxed);
                    }
                    count(true, &mut counted);
                    requests.resubscribe(&filters);
                    requests.send(&client, &metrics, connection.load(SeqCst));
                }
                Some(Ok(Event::Incoming(Packet::SubAck(_)))) => {
                    if report_ready && !metrics.ingest_ready.swap(true, Relaxed) {
                        tracing::info!(client_id = %cfg.client_id, "ingest subscribed");
                    }
                }
                Some(Ok(Event::Incoming(Packet::Publish(p)))) => {
                    // Verified and decoded on the runtime's workers, several at once; the results
                    // are taken in arrival order below.
                    let (cfg, metrics, on) = (cfg.clone(), metrics.clone(), came_on);
                    decoding.push_back(tokio::spawn(async move {
                        let mut authenticated = None;
                        let op = classify(&cfg, &p, &metrics, &mut authenticated);
                        (p, op, authenticated, on)
                    }));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    // The driver waits before it connects again. What came before this is owed to
                    // the connection just lost: its acknowledgements are not sent on the next one.
                    came_on += 1;
                    failures += 1;
                    if report_ready {
                        metrics.ingest_ready.store(false, Relaxed);
                    }
                    count(false, &mut counted);
                    metrics.mqtt_errors.fetch_add(1, Relaxed);
                    if failures == 1 {
                        tracing::warn!(error = %e, host = %cfg.host, port = cfg.port, "ingest lost the broker; reconnecting");
                    }
                }
            }
        }
    }
    // What was handed to the store is committed and acknowledged before leaving (for a while:
    // what is not, the broker sends again to whoever resumes this session), then leave cleanly.
    requests.keep_acks();
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while in_flight > 0 || requests.waiting() {
            tokio::select! {
                owed = ack_rx.recv(), if in_flight > 0 => {
                    let Some(owed) = owed else { break };
                    in_flight -= 1;
                    requests.push(Request::Ack(owed));
                }
                _ = retry.tick() => {}
                // The driver goes on polling (and so sending) while the session leaves; what
                // comes in now is not stored, and the broker sends it again.
                Some(_) = events.recv() => {}
            }
            requests.send(&client, &metrics, connection.load(SeqCst));
        }
    })
    .await;
    if in_flight > 0 || requests.waiting() {
        tracing::warn!(client_id = %cfg.client_id, in_flight, unsent = requests.len(), "left with messages not yet stored or acknowledged; the broker sends them again");
    }
    if report_ready {
        metrics.ingest_ready.store(false, Relaxed);
    }
    count(false, &mut counted);
    leave(&client, &mut events, driver).await;
    tracing::info!(client_id = %cfg.client_id, "ingest stopped");
}

/// The broker connection's options as `cfg` says, under `client_id`.
fn options(cfg: &IngestConfig, client_id: String) -> MqttOptions {
    let mut opts = MqttOptions::new(client_id, cfg.host.clone(), cfg.port);
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_max_packet_size(cfg.limits.max_payload + 4096, cfg.limits.max_payload + 4096);
    if let (Some(u), Some(p)) = (&cfg.username, &cfg.password) {
        opts.set_credentials(u.clone(), p.clone());
    }
    if let Some(tls) = &cfg.tls {
        opts.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(tls.clone()),
        ));
    }
    opts
}

/// How often requests that did not fit the connection's request queue are tried again.
const REQUEST_RETRY: Duration = Duration::from_millis(5);

/// An acknowledgement owed for a stored message, and the connection its message came on.
#[derive(Debug, Clone, Copy)]
struct Owed {
    connection: u64,
    pkid: u16,
    qos: QoS,
}

/// What the session hands the broker connection.
#[derive(Debug)]
enum Request {
    Ack(Owed),
    Subscribe(String),
    Unsubscribe(String),
    /// A command to a gateway (QoS 1).
    Command {
        topic: String,
        payload: Vec<u8>,
    },
}

/// Requests for the broker connection, in order, that did not fit its request queue yet: each
/// waits here for the next try instead of being dropped. A dropped acknowledgement was a message
/// the broker counts as in flight until the session reconnects: under sustained load enough were
/// lost (2026-12-04) that Mosquitto stopped sending while the connection looked healthy, and
/// ingest stalled for good. A dropped subscription was a partition's gateways not taken in until
/// the next connection. Commands wait too: awaiting room in the queue could deadlock the
/// session, since only the driver empties it and the driver waits for the session.
///
/// An acknowledgement owed on a connection since lost is dropped instead: the broker sends its
/// message again on the next connection (the store recognises it), and a stale packet id could
/// acknowledge a different message there before it is stored. rumqttc drops the acknowledgements
/// still in its queue when a connection fails, for the same reason, and the driver clears them
/// once more before it connects again ([`drive`]).
#[derive(Default)]
struct Requests {
    waiting: std::collections::VecDeque<Request>,
}

impl Requests {
    fn push(&mut self, r: Request) {
        self.waiting.push_back(r);
    }

    fn waiting(&self) -> bool {
        !self.waiting.is_empty()
    }

    fn len(&self) -> usize {
        self.waiting.len()
    }

    /// On a new connection: every filter, after the unsubscriptions still waiting (a resumed
    /// session keeps what it had).
    fn resubscribe(&mut self, filters: &[String]) {
        self.waiting.retain(|r| !matches!(r, Request::Subscribe(_)));
        self.waiting
            .extend(filters.iter().cloned().map(Request::Subscribe));
    }

    /// At shutdown only what is owed for stored messages still matters.
    fn keep_acks(&mut self) {
        self.waiting.retain(|r| matches!(r, Request::Ack(_)));
    }

    /// Queues what fits, oldest first, on the connection `current`.
    fn send(&mut self, client: &impl RequestQueue, metrics: &Metrics, current: u64) {
        while let Some(r) = self.waiting.front() {
            let queued = match r {
                Request::Ack(owed) if owed.connection != current => true,
                Request::Ack(owed) => client.try_ack(owed),
                Request::Subscribe(filter) => client.try_subscribe(filter),
                Request::Unsubscribe(filter) => client.try_unsubscribe(filter),
                Request::Command { topic, payload } => client.try_command(topic, payload),
            };
            if !queued {
                // Full (or the connection's driver gone, and the session with it).
                metrics.request_waits.fetch_add(1, Relaxed);
                return;
            }
            self.waiting.pop_front();
        }
    }
}

/// The broker connection's request queue, as [`Requests`] uses it: each returns whether the
/// request was queued.
trait RequestQueue {
    fn try_ack(&self, owed: &Owed) -> bool;
    fn try_subscribe(&self, filter: &str) -> bool;
    fn try_unsubscribe(&self, filter: &str) -> bool;
    fn try_command(&self, topic: &str, payload: &[u8]) -> bool;
}

impl RequestQueue for AsyncClient {
    fn try_ack(&self, owed: &Owed) -> bool {
        let mut p = Publish::new(String::new(), owed.qos, Vec::new());
        p.pkid = owed.pkid;
        AsyncClient::try_ack(self, &p).is_ok()
    }

    fn try_subscribe(&self, filter: &str) -> bool {
        AsyncClient::try_subscribe(self, filter, QoS::AtLeastOnce).is_ok()
    }

    fn try_unsubscribe(&self, filter: &str) -> bool {
        AsyncClient::try_unsubscribe(self, filter).is_ok()
    }

    fn try_command(&self, topic: &str, payload: &[u8]) -> bool {
        AsyncClient::try_publish(self, topic, QoS::AtLeastOnce, false, payload.to_vec()).is_ok()
    }
}

type Polled = Result<Event, rumqttc::ConnectionError>;

/// Polls `eventloop` on a task of its own and passes on what it yields, so that no `select!`
/// ever drops a poll half-way: rumqttc's poll is not cancel-safe while it connects (a dropped
/// connect is made again, and the broker takes the second as a takeover of the first). After an
/// error it waits (backoff with jitter) before polling, which connects again. The small channel
/// keeps the backpressure: while the receiver takes nothing, the broker is not read.
fn drive(
    mut eventloop: rumqttc::EventLoop,
    lost: Arc<AtomicU64>,
) -> (mpsc::Receiver<Polled>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(EVENTS);
    let handle = tokio::spawn(async move {
        let mut failures = 0u32;
        // Requests taken off the queue while the connection was down, for the next one.
        let mut held = std::collections::VecDeque::new();
        loop {
            let ev = eventloop.poll().await;
            let failed = ev.is_err();
            if matches!(ev, Ok(Event::Incoming(Packet::ConnAck(_)))) {
                failures = 0;
                // After the ConnAck: rumqttc empties its pending requests when the broker kept no
                // session, and these (commands, subscriptions) were queued after the loss.
                eventloop.pending.append(&mut held);
            }
            // What went out is not the session's business, but for the DISCONNECT it waits for
            // when it leaves: acknowledgements go out without a turn of the session each.
            if matches!(&ev, Ok(Event::Outgoing(o)) if !matches!(o, rumqttc::Outgoing::Disconnect))
            {
                continue;
            }
            if failed {
                // Counted before the session hears of it, so that it stops sending the lost
                // connection's acknowledgements at once (see [`Requests`]).
                lost.fetch_add(1, SeqCst);
            }
            if tx.send(ev).await.is_err() {
                return;
            }
            if failed {
                failures += 1;
                tokio::time::sleep(protocol::reconnect::delay(failures, fastrand::f64())).await;
                // Acknowledgements the session queued before it saw the loss go nowhere: rumqttc's
                // clean drops queued acknowledgements (and moves other requests to its pending
                // list, which are held for after the next ConnAck). Packets read from the lost
                // connection and not yet handed out go too: the broker sends them again.
                let before = eventloop.pending.len();
                eventloop.clean();
                held.extend(eventloop.pending.drain(before..));
                eventloop.state.events.clear();
            }
        }
    });
    (rx, handle)
}

/// Disconnects cleanly (up to half a second for the DISCONNECT to go out), then stops the driver.
async fn leave(
    client: &AsyncClient,
    events: &mut mpsc::Receiver<Polled>,
    driver: tokio::task::JoinHandle<()>,
) {
    // The DISCONNECT goes behind the acknowledgements already queued: once it is out, they are.
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        // One request, polled until it is queued: room comes as the driver goes on (events are
        // taken below).
        let disconnect = client.disconnect();
        tokio::pin!(disconnect);
        let mut queued = false;
        loop {
            tokio::select! {
                r = &mut disconnect, if !queued => match r {
                    Ok(()) => queued = true,
                    Err(_) => break,
                },
                ev = events.recv() => match ev {
                    Some(Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect))) => break,
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => break,
                },
            }
        }
    })
    .await;
    driver.abort();
    let _ = driver.await;
}

/// Applies the rate limit of the gateway a message was authenticated as, in arrival order.
fn limit(
    op: Option<WriteOp>,
    authenticated: Option<GatewayId>,
    p: &Publish,
    cfg: &IngestConfig,
    metrics: &Metrics,
    limiter: &mut RateLimiter,
) -> Option<WriteOp> {
    let Some(gateway) = authenticated else {
        return op;
    };
    let received = Timestamp::now();
    match limiter.take(gateway.as_str(), received.unix_millis()) {
        Limited::No => op,
        Limited::Sample(dropped) => {
            let limit = cfg.rate_limit.unwrap_or_default();
            metrics.rejected("rate_limited");
            Some(WriteOp::DeadLetter {
                received,
                topic: p.topic.clone(),
                gateway: Some(gateway.to_string()),
                code: "rate_limited".into(),
                reason: format!(
                    "gateway {gateway} sends more than {} messages/s (bursts up to {}); messages over the limit are counted and one per {} s kept here ({dropped} dropped since the last one kept)",
                    limit.per_s,
                    limit.burst,
                    LIMITED_SAMPLE_MS / 1000
                ),
                payload: p.payload.to_vec(),
            })
        }
        Limited::Drop => {
            metrics.rejected("rate_limited");
            None
        }
    }
}

/// Decodes one message into the write it causes, or a dead letter. `None`: nothing to store.
/// `authenticated` is set to the gateway once the message is known to be its.
fn classify(
    cfg: &IngestConfig,
    p: &Publish,
    metrics: &Metrics,
    authenticated: &mut Option<GatewayId>,
) -> Option<WriteOp> {
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
    if matches!(channel, Channel::Cmd | Channel::Config) {
        return dead(
            gw,
            "wrong_direction",
            "gateways do not publish on the command or configuration topic".into(),
        );
    }
    // A key added moments ago is picked up here (see KeyRing::check_fresh).
    let msg = match cfg.keys.check_fresh(&gateway, &p.topic, &p.payload) {
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
    // From here on the message is known to be this gateway's: it counts against its rate limit
    // (a forgery under its topic must not use up its budget).
    *authenticated = Some(gateway.clone());
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
        Channel::Cmd | Channel::Config => None, // refused above
    }
}

/// A per-gateway message rate limit: a token bucket of `burst` messages refilled at `per_s`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub per_s: f64,
    pub burst: f64,
}

impl Default for RateLimit {
    /// Far above what an agent sends, even replaying a day's spool (it paces itself to
    /// `replay_items_per_s`, 500 items/s by default, in batches): the limit is for a gateway gone
    /// wrong, not for a busy one.
    fn default() -> Self {
        Self {
            per_s: 200.0,
            burst: 2_000.0,
        }
    }
}

/// How often a limited gateway's message is kept as a dead letter (the others are only counted,
/// so a flood cannot fill the store through the dead letters either).
const LIMITED_SAMPLE_MS: i64 = 10_000;

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at_ms: i64,
    /// When a limited message of this gateway was last kept as a dead letter.
    sampled_ms: Option<i64>,
    /// Limited messages not kept since then.
    unsampled: u64,
}

/// What the limiter decided about one message.
#[derive(Debug, PartialEq, Eq)]
pub enum Limited {
    No,
    /// Over the limit; keep this one as a dead letter (`n` more were dropped since the last one).
    Sample(u64),
    /// Over the limit; count it only.
    Drop,
}

/// Token buckets by gateway, for the ingest task.
#[derive(Debug, Default)]
pub struct RateLimiter {
    limit: Option<RateLimit>,
    buckets: std::collections::HashMap<String, Bucket>,
}

impl RateLimiter {
    pub fn new(limit: Option<RateLimit>) -> Self {
        Self {
            limit,
            buckets: Default::default(),
        }
    }

    pub fn take(&mut self, gateway: &str, now_ms: i64) -> Limited {
        let Some(limit) = self.limit else {
            return Limited::No;
        };
        let b = match self.buckets.get_mut(gateway) {
            Some(b) => b,
            None => self.buckets.entry(gateway.to_owned()).or_insert(Bucket {
                tokens: limit.burst,
                at_ms: now_ms,
                sampled_ms: None,
                unsampled: 0,
            }),
        };
        let elapsed = (now_ms - b.at_ms).max(0) as f64 / 1000.0;
        b.tokens = (b.tokens + elapsed * limit.per_s).min(limit.burst);
        b.at_ms = now_ms;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Limited::No;
        }
        if b.sampled_ms.is_none_or(|t| now_ms - t >= LIMITED_SAMPLE_MS) {
            b.sampled_ms = Some(now_ms);
            Limited::Sample(std::mem::take(&mut b.unsampled))
        } else {
            b.unsampled += 1;
            Limited::Drop
        }
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

    /// A request queue of `room` places, each request written as text.
    struct Queue {
        room: usize,
        queued: std::cell::RefCell<Vec<String>>,
    }

    impl Queue {
        fn with_room(room: usize) -> Self {
            Self {
                room,
                queued: Default::default(),
            }
        }

        fn put(&self, request: String) -> bool {
            let mut q = self.queued.borrow_mut();
            if q.len() == self.room {
                return false;
            }
            q.push(request);
            true
        }

        /// What the connection takes: the queue empties.
        fn take(&self) -> Vec<String> {
            std::mem::take(&mut self.queued.borrow_mut())
        }
    }

    impl RequestQueue for Queue {
        fn try_ack(&self, owed: &Owed) -> bool {
            self.put(format!("ack {}", owed.pkid))
        }

        fn try_subscribe(&self, filter: &str) -> bool {
            self.put(format!("+{filter}"))
        }

        fn try_unsubscribe(&self, filter: &str) -> bool {
            self.put(format!("-{filter}"))
        }

        fn try_command(&self, topic: &str, payload: &[u8]) -> bool {
            self.put(format!("{topic} {}", String::from_utf8_lossy(payload)))
        }
    }

    fn ack(connection: u64, pkid: u16) -> Request {
        Request::Ack(Owed {
            connection,
            pkid,
            qos: QoS::AtLeastOnce,
        })
    }

    #[test]
    fn acknowledgements_that_do_not_fit_wait_and_go_in_order() {
        let q = Queue::with_room(2);
        let metrics = Metrics::default();
        let mut requests = Requests::default();
        for pkid in 1..=5 {
            requests.push(ack(0, pkid));
        }
        requests.send(&q, &metrics, 0);
        assert_eq!(*q.queued.borrow(), ["ack 1", "ack 2"]);
        assert_eq!(requests.len(), 3, "none dropped");
        assert_eq!(metrics.request_waits.load(Relaxed), 1);
        let mut sent = Vec::new();
        while requests.waiting() {
            // The connection takes the queued ones; the rest go at the next try.
            sent.append(&mut q.take());
            requests.send(&q, &metrics, 0);
        }
        sent.append(&mut q.take());
        assert_eq!(sent, ["ack 1", "ack 2", "ack 3", "ack 4", "ack 5"]);
        assert_eq!(metrics.request_waits.load(Relaxed), 2);
    }

    #[test]
    fn acknowledgements_owed_on_a_lost_connection_are_not_sent_on_the_next() {
        let q = Queue::with_room(10);
        let metrics = Metrics::default();
        let mut requests = Requests::default();
        for (connection, pkid) in [(0, 7), (0, 8), (1, 7), (1, 9)] {
            requests.push(ack(connection, pkid));
        }
        // Connection 0 was lost: its packet ids may name other messages on connection 1.
        requests.send(&q, &metrics, 1);
        assert_eq!(*q.queued.borrow(), ["ack 7", "ack 9"]);
        assert!(!requests.waiting());
    }

    #[test]
    fn subscriptions_and_commands_that_do_not_fit_wait_in_order() {
        let q = Queue::with_room(1);
        let metrics = Metrics::default();
        let mut requests = Requests::default();
        requests.push(Request::Subscribe("gw/a".into()));
        requests.push(Request::Unsubscribe("gw/b".into()));
        requests.push(Request::Subscribe("gw/b".into()));
        requests.push(Request::Command {
            topic: "gw/a/cmd".into(),
            payload: b"on".to_vec(),
        });
        requests.push(ack(0, 3));
        let mut sent = Vec::new();
        while requests.waiting() {
            requests.send(&q, &metrics, 0);
            sent.append(&mut q.take());
        }
        assert_eq!(sent, ["+gw/a", "-gw/b", "+gw/b", "gw/a/cmd on", "ack 3"]);

        // A new connection: the waiting unsubscription stays, then every current filter; at
        // shutdown only acknowledgements are left to send.
        let q = Queue::with_room(0);
        requests.push(Request::Subscribe("gw/c".into()));
        requests.push(Request::Unsubscribe("gw/d".into()));
        requests.push(ack(1, 4));
        requests.resubscribe(&["gw/a".into(), "gw/c".into()]);
        requests.send(&q, &metrics, 1);
        assert_eq!(requests.len(), 4);
        let q = Queue::with_room(10);
        requests.send(&q, &metrics, 1);
        assert_eq!(q.take(), ["-gw/d", "ack 4", "+gw/a", "+gw/c"]);
        requests.push(Request::Subscribe("gw/e".into()));
        requests.push(ack(1, 5));
        requests.keep_acks();
        requests.send(&q, &metrics, 1);
        assert_eq!(q.take(), ["ack 5"]);
    }

    #[test]
    fn rate_limit_is_a_token_bucket_per_gateway_with_sampled_dead_letters() {
        let mut l = RateLimiter::new(Some(RateLimit {
            per_s: 10.0,
            burst: 5.0,
        }));
        let t = 1_000_000;
        for _ in 0..5 {
            assert_eq!(l.take("gw-a", t), Limited::No);
        }
        // The burst is spent: the first refusal is kept, the next ones only counted.
        assert_eq!(l.take("gw-a", t), Limited::Sample(0));
        assert_eq!(l.take("gw-a", t + 50), Limited::Drop);
        // Another gateway has its own bucket.
        assert_eq!(l.take("gw-b", t), Limited::No);
        // 100 ms later one token is back (10/s).
        assert_eq!(l.take("gw-a", t + 100), Limited::No);
        assert_eq!(l.take("gw-a", t + 100), Limited::Drop);
        // Ten seconds on, the bucket is full again; refusals are sampled again then.
        for _ in 0..5 {
            assert_eq!(l.take("gw-a", t + 10_100), Limited::No);
        }
        assert_eq!(l.take("gw-a", t + 10_100), Limited::Sample(2));
        // No limit configured: never limited.
        let mut off = RateLimiter::new(None);
        assert!((0..10_000).all(|_| off.take("gw-a", t) == Limited::No));
    }

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
