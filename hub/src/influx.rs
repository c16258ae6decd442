//! The InfluxDB 2 sink: a copy of every newly stored reading and event, written as line protocol to
//! an InfluxDB 2 (or anything speaking its v2 write API) for cities that run Grafana on it.
//!
//! SQLite stays the system of record; the sink must never slow ingest or grow memory:
//!
//! ```text
//! store writer ─(after commit, try_send)─▶ bounded queue ─▶ sink thread ─▶ batches ─▶ POST /api/v2/write (gzip)
//!                     full: dropped, counted                    │
//!                                                                └─ 429/503: wait Retry-After; 5xx, no answer: back off,
//!                                                                   retry; 413: split in halves; 400/422: drop, count
//! ```
//!
//! The schema is in docs/INFLUXDB.md. Written by hand over ureq rather than with the influxdb2
//! crate: that crate's write call hides the status code and the `Retry-After` header the retry
//! policy needs, and pulls reqwest beside the ureq the hub already has.

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use crate::db::{Sql, args};
use protocol::{Envelope, Item, Quality, Value};

/// Where and how to write.
#[derive(Debug, Clone)]
pub struct InfluxConfig {
    /// Base URL, e.g. `http://influx:8086`.
    pub url: String,
    pub org: String,
    pub bucket: String,
    pub token: String,
    /// Lines per write request.
    pub batch_lines: usize,
    /// Longest a line waits before its batch is sent.
    pub max_wait: Duration,
    /// Lines the queue holds; beyond, new lines are dropped and counted.
    pub queue_lines: usize,
}

impl InfluxConfig {
    pub fn new(url: &str, org: &str, bucket: &str, token: &str) -> Self {
        Self {
            url: url.trim_end_matches('/').to_owned(),
            org: org.to_owned(),
            bucket: bucket.to_owned(),
            token: token.to_owned(),
            batch_lines: 5_000,
            max_wait: Duration::from_secs(1),
            queue_lines: 200_000,
        }
    }
}

/// Counters of the sink, in the hub's `/metrics`.
#[derive(Debug, Default)]
pub struct SinkMetrics {
    pub lines_written: AtomicU64,
    pub batches_written: AtomicU64,
    pub retries: AtomicU64,
    pub queued_lines: AtomicU64,
    pub dropped_queue_full: AtomicU64,
    pub dropped_rejected: AtomicU64,
    pub dropped_too_large: AtomicU64,
    pub skipped_bad_quality: AtomicU64,
}

/// The writer's end: hands over what a batch committed, never waiting.
#[derive(Debug, Clone)]
pub struct Sink {
    tx: SyncSender<Vec<Envelope>>,
    metrics: Arc<SinkMetrics>,
    queue_lines: u64,
}

impl Sink {
    /// Offers the envelopes a batch newly committed. Drops them (counted) when the queue is full.
    pub fn offer(&self, envelopes: Vec<Envelope>) {
        if envelopes.is_empty() {
            return;
        }
        let items: u64 = envelopes.iter().map(|e| e.items.len() as u64).sum();
        if self.metrics.queued_lines.load(Relaxed) + items > self.queue_lines {
            self.metrics.dropped_queue_full.fetch_add(items, Relaxed);
            return;
        }
        match self.tx.try_send(envelopes) {
            Ok(()) => {
                self.metrics.queued_lines.fetch_add(items, Relaxed);
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.metrics.dropped_queue_full.fetch_add(items, Relaxed);
            }
        }
    }
}

/// Starts the sink thread. `conn` is a connection to the hub database (read for asset tags).
pub fn start(
    cfg: InfluxConfig,
    conn: Box<dyn Sql + Send>,
) -> anyhow::Result<(Sink, Arc<SinkMetrics>)> {
    let metrics = Arc::new(SinkMetrics::default());
    let (tx, rx) = std::sync::mpsc::sync_channel(1024);
    let m = metrics.clone();
    let queue_lines = cfg.queue_lines as u64;
    std::thread::Builder::new()
        .name("influx-sink".into())
        .spawn(move || run(cfg, rx, conn, m))?;
    Ok((
        Sink {
            tx,
            metrics: metrics.clone(),
            queue_lines,
        },
        metrics,
    ))
}

/// Tags of a device, from the asset registry.
#[derive(Debug, Clone, Default)]
struct Tags {
    measurement: String,
    /// Pre-escaped `,asset=...,kind=...` etc.
    extra: String,
    loaded: Option<Instant>,
}

fn run(
    cfg: InfluxConfig,
    rx: Receiver<Vec<Envelope>>,
    conn: Box<dyn Sql + Send>,
    m: Arc<SinkMetrics>,
) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(5)))
        .timeout_global(Some(Duration::from_secs(30)))
        .http_status_as_error(false)
        .build()
        .into();
    let url = format!(
        "{}/api/v2/write?org={}&bucket={}&precision=ms",
        cfg.url,
        urlencode(&cfg.org),
        urlencode(&cfg.bucket)
    );
    let mut tags: HashMap<(String, String), Tags> = HashMap::new();
    let mut lines: Vec<String> = Vec::with_capacity(cfg.batch_lines);
    let mut first_at: Option<Instant> = None;
    let mut last_error_log = Instant::now() - Duration::from_secs(3600);
    loop {
        let wait = match first_at {
            Some(t) => cfg.max_wait.saturating_sub(t.elapsed()),
            None => Duration::from_secs(3600),
        };
        let closed = match rx.recv_timeout(wait) {
            Ok(envs) => {
                for env in &envs {
                    let n = env.items.len() as u64;
                    encode(env, &*conn, &mut tags, &mut lines, &m);
                    m.queued_lines.fetch_sub(n, Relaxed);
                }
                first_at.get_or_insert_with(Instant::now);
                false
            }
            Err(RecvTimeoutError::Timeout) => false,
            Err(RecvTimeoutError::Disconnected) => true,
        };
        let due = first_at.is_some_and(|t| t.elapsed() >= cfg.max_wait);
        if !lines.is_empty() && (lines.len() >= cfg.batch_lines || due || closed) {
            send(&agent, &url, &cfg, &lines, &m, &mut last_error_log);
            lines.clear();
            first_at = None;
        }
        if closed {
            break;
        }
    }
    tracing::info!("InfluxDB sink stopped");
}

/// Sends `lines`, retrying as the server asks; splits on 413. Returns when written or dropped.
fn send(
    agent: &ureq::Agent,
    url: &str,
    cfg: &InfluxConfig,
    lines: &[String],
    m: &SinkMetrics,
    last_error_log: &mut Instant,
) {
    let mut backoff = Duration::from_millis(500);
    loop {
        match post(agent, url, &cfg.token, lines) {
            Ok(Answer::Written) => {
                m.lines_written.fetch_add(lines.len() as u64, Relaxed);
                m.batches_written.fetch_add(1, Relaxed);
                return;
            }
            Ok(Answer::TooLarge) => {
                if lines.len() == 1 {
                    m.dropped_too_large.fetch_add(1, Relaxed);
                    tracing::warn!("InfluxDB refused one line as too large (413); dropped");
                    return;
                }
                let (a, b) = lines.split_at(lines.len() / 2);
                send(agent, url, cfg, a, m, last_error_log);
                send(agent, url, cfg, b, m, last_error_log);
                return;
            }
            Ok(Answer::Rejected(status, body)) => {
                m.dropped_rejected.fetch_add(lines.len() as u64, Relaxed);
                if last_error_log.elapsed() >= Duration::from_secs(60) {
                    *last_error_log = Instant::now();
                    tracing::error!(status, body = %body, lines = lines.len(), "InfluxDB rejected a batch; dropped (logged once a minute)");
                }
                return;
            }
            Ok(Answer::Later(retry_after)) => {
                m.retries.fetch_add(1, Relaxed);
                let wait = retry_after.unwrap_or(backoff).min(Duration::from_secs(60));
                tracing::warn!(?wait, "InfluxDB is busy; retrying");
                std::thread::sleep(wait);
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
            Err(e) => {
                m.retries.fetch_add(1, Relaxed);
                if last_error_log.elapsed() >= Duration::from_secs(60) {
                    *last_error_log = Instant::now();
                    tracing::warn!(error = %e, ?backoff, "cannot reach InfluxDB; retrying (logged once a minute)");
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

#[derive(Debug, PartialEq)]
enum Answer {
    Written,
    TooLarge,
    /// Retry after this long (`None`: the caller's backoff).
    Later(Option<Duration>),
    Rejected(u16, String),
}

fn post(agent: &ureq::Agent, url: &str, token: &str, lines: &[String]) -> anyhow::Result<Answer> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    for l in lines {
        gz.write_all(l.as_bytes())?;
        gz.write_all(b"\n")?;
    }
    let body = gz.finish()?;
    let mut resp = agent
        .post(url)
        .header("authorization", &format!("Token {token}"))
        .header("content-type", "text/plain; charset=utf-8")
        .header("content-encoding", "gzip")
        .send(&body[..])?;
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    let text = resp
        .body_mut()
        .with_config()
        .limit(4096)
        .read_to_string()
        .unwrap_or_default();
    Ok(match status {
        200..=299 => Answer::Written,
        413 => Answer::TooLarge,
        429 | 503 => Answer::Later(retry_after),
        500..=599 => Answer::Later(None),
        s => Answer::Rejected(s, text),
    })
}

/// `Retry-After`: delay-seconds or an HTTP date.
fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(s) = v.parse::<u64>() {
        return Some(Duration::from_secs(s));
    }
    let fmt = time::format_description::well_known::Rfc2822;
    let at = time::OffsetDateTime::parse(v, &fmt).ok()?;
    let secs = (at - time::OffsetDateTime::now_utc())
        .whole_seconds()
        .max(0);
    Some(Duration::from_secs(secs as u64))
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Escapes a measurement name (commas, spaces).
fn esc_measurement(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, ',' | ' ' | '\\') {
            o.push('\\');
        }
        o.push(c);
    }
    o
}

/// Escapes a tag key, tag value or field key (commas, equals signs, spaces).
fn esc_key(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, ',' | '=' | ' ' | '\\') {
            o.push('\\');
        }
        o.push(c);
    }
    o
}

/// A string field value: quoted, with `"` and `\` escaped.
fn esc_string(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        if matches!(c, '"' | '\\') {
            o.push('\\');
        }
        o.push(c);
    }
    o.push('"');
    o
}

fn field_value(v: &Value) -> String {
    match v {
        Value::Number(n) => {
            if n.is_finite() {
                format!("{n:?}")
            } else {
                "0".into()
            }
        }
        Value::Bool(b) => b.to_string(),
        Value::Text(t) => esc_string(t),
    }
}

/// Looks up (and caches for 5 minutes) the measurement and tags of a device.
fn tags_of<'a>(
    conn: &dyn Sql,
    cache: &'a mut HashMap<(String, String), Tags>,
    gateway: &str,
    device: &str,
) -> &'a Tags {
    let key = (gateway.to_owned(), device.to_owned());
    let stale = cache.get(&key).is_none_or(|t| {
        t.loaded
            .is_none_or(|at| at.elapsed() > Duration::from_secs(300))
    });
    if stale {
        let row = conn
            .query_opt(
                "SELECT id, kind, road_segment, grid, zone FROM assets WHERE gateway = $1 AND device = $2 ORDER BY id LIMIT 1",
                args![gateway, device],
            )
            .and_then(|r| {
                r.map(|r| {
                    Ok((
                        r.get::<String>(0)?,
                        r.get::<String>(1)?,
                        r.get::<Option<String>>(2)?,
                        r.get::<Option<String>>(3)?,
                        r.get::<Option<String>>(4)?,
                    ))
                })
                .transpose()
            })
            .unwrap_or(None);
        let t = match row {
            Some((asset, kind, road, grid, zone)) => {
                let mut extra = format!(",asset={},kind={}", esc_key(&asset), esc_key(&kind));
                for (k, v) in [("road_segment", road), ("grid", grid), ("zone", zone)] {
                    if let Some(v) = v.filter(|v| !v.is_empty()) {
                        extra.push_str(&format!(",{k}={}", esc_key(&v)));
                    }
                }
                Tags {
                    measurement: esc_measurement(&snake(&kind)),
                    extra,
                    // An asset found is cached; a device not (yet) announced is looked up again.
                    loaded: Some(Instant::now()),
                }
            }
            None => Tags {
                measurement: "reading".into(),
                extra: String::new(),
                loaded: None,
            },
        };
        cache.insert(key.clone(), t);
    }
    &cache[&key]
}

/// `streetLight` → `street_light`.
fn snake(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 4);
    for c in s.chars() {
        if c.is_ascii_uppercase() {
            if !o.is_empty() {
                o.push('_');
            }
            o.push(c.to_ascii_lowercase());
        } else {
            o.push(c);
        }
    }
    o
}

/// Lines of one envelope: one per (device, time) with every metric read then as a field; one per
/// event. Bad readings are left out (counted); plates in event attributes are masked.
fn encode(
    env: &Envelope,
    conn: &dyn Sql,
    cache: &mut HashMap<(String, String), Tags>,
    out: &mut Vec<String>,
    m: &SinkMetrics,
) {
    let gw = env.gateway.as_str();
    // (device, ts) → fields, in first-seen order.
    let mut points: Vec<((String, i64), String)> = Vec::new();
    let mut index: HashMap<(String, i64), usize> = HashMap::new();
    for item in &env.items {
        match item {
            Item::Reading(r) => {
                let (Some(v), Quality::Good) = (&r.value, &r.quality) else {
                    m.skipped_bad_quality.fetch_add(1, Relaxed);
                    continue;
                };
                let key = (r.device.to_string(), r.observed_at.unix_millis());
                let field = format!("{}={}", esc_key(r.metric.as_str()), field_value(v));
                match index.get(&key) {
                    Some(&i) => {
                        points[i].1.push(',');
                        points[i].1.push_str(&field);
                    }
                    None => {
                        index.insert(key.clone(), points.len());
                        points.push((key, field));
                    }
                }
            }
            Item::Event(e) => {
                let t = tags_of(conn, cache, gw, e.device.as_str());
                let mut attrs = serde_json::to_value(&e.attributes).unwrap_or_default();
                crate::access::mask_attributes(&mut attrs);
                let phase = serde_json::to_value(e.phase)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                out.push(format!(
                    "event,gateway={},device={}{},event={},phase={} attributes={},evidence={}i {}",
                    esc_key(gw),
                    esc_key(e.device.as_str()),
                    t.extra,
                    esc_key(e.event.as_str()),
                    esc_key(&phase),
                    esc_string(&attrs.to_string()),
                    e.evidence.len(),
                    e.observed_at.unix_millis()
                ));
            }
        }
    }
    for ((device, ts), fields) in points {
        let t = tags_of(conn, cache, gw, &device);
        out.push(format!(
            "{},gateway={},device={}{} {fields} {ts}",
            t.measurement,
            esc_key(gw),
            esc_key(&device),
            t.extra
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_per_the_line_protocol() {
        assert_eq!(esc_measurement("a b,c"), "a\\ b\\,c");
        assert_eq!(esc_key("k=1, x"), "k\\=1\\,\\ x");
        assert_eq!(esc_string("say \"hi\" \\o/"), "\"say \\\"hi\\\" \\\\o/\"");
        assert_eq!(field_value(&Value::Number(1.0)), "1.0");
        assert_eq!(field_value(&Value::Number(f64::NAN)), "0");
        assert_eq!(field_value(&Value::Bool(true)), "true");
        assert_eq!(snake("waterLevel"), "water_level");
        assert_eq!(urlencode("city a/b"), "city%20a%2Fb");
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn readings_of_one_device_and_time_share_a_line() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = rusqlite::Connection::open(dir.path().join("db")).unwrap();
        crate::store::prepare(&mut conn).unwrap();
        conn.execute(
            "INSERT INTO assets (id, kind, gateway, device, road_segment, updated_at) VALUES ('lamp 1', 'streetLight', 'gw-a', 'd1', 'rd,1', 0)",
            [],
        )
        .unwrap();
        let env: Envelope = serde_json::from_value(serde_json::json!({
            "v": 1, "gateway": "gw-a", "boot": "67e55044-10b1-426f-9247-bb680e5fe0c8", "seq": 0,
            "sentAt": "2026-11-22T06:00:00.000Z", "clock": "synced",
            "items": [
                {"kind": "reading", "device": "d1", "metric": "voltage", "observedAt": "2026-11-22T06:00:00.000Z", "value": 230.5},
                {"kind": "reading", "device": "d1", "metric": "powerState", "observedAt": "2026-11-22T06:00:00.000Z", "value": true},
                {"kind": "reading", "device": "d2", "metric": "note", "observedAt": "2026-11-22T06:00:01.000Z", "value": "a \"b\""},
                {"kind": "reading", "device": "d2", "metric": "x", "observedAt": "2026-11-22T06:00:01.000Z", "quality": {"bad": {"reason": "timeout"}}},
                {"kind": "event", "device": "d1", "event": "plate", "observedAt": "2026-11-22T06:00:02.000Z", "phase": "instant", "attributes": {"plate": "苏A8HK52"}}
            ]
        }))
        .unwrap();
        let (mut cache, mut out, m) = (HashMap::new(), Vec::new(), SinkMetrics::default());
        encode(&env, &conn, &mut cache, &mut out, &m);
        assert_eq!(
            out,
            [
                "event,gateway=gw-a,device=d1,asset=lamp\\ 1,kind=streetLight,road_segment=rd\\,1,event=plate,phase=instant attributes=\"{\\\"plate\\\":\\\"苏A8H***\\\"}\",evidence=0i 1795327202000",
                "street_light,gateway=gw-a,device=d1,asset=lamp\\ 1,kind=streetLight,road_segment=rd\\,1 voltage=230.5,powerState=true 1795327200000",
                "reading,gateway=gw-a,device=d2 note=\"a \\\"b\\\"\" 1795327201000",
            ]
        );
        assert_eq!(m.skipped_bad_quality.load(Relaxed), 1);
    }

    /// A write endpoint answering from a script; records the lines of every request.
    fn fake_server(
        script: Vec<(u16, Option<&'static str>)>,
    ) -> (String, Arc<std::sync::Mutex<Vec<Vec<String>>>>) {
        use std::io::Read as _;
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let script = Arc::new(std::sync::Mutex::new(std::collections::VecDeque::from(
            script,
        )));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen2 = seen.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let app = axum::Router::new().route(
                    "/api/v2/write",
                    axum::routing::post(move |body: axum::body::Bytes| {
                        let (seen, script) = (seen2.clone(), script.clone());
                        async move {
                            let mut text = String::new();
                            flate2::read::GzDecoder::new(&body[..])
                                .read_to_string(&mut text)
                                .unwrap();
                            seen.lock()
                                .unwrap()
                                .push(text.lines().map(str::to_owned).collect());
                            let (status, retry) =
                                script.lock().unwrap().pop_front().unwrap_or((204, None));
                            let mut r = axum::http::Response::builder().status(status);
                            if let Some(v) = retry {
                                r = r.header("retry-after", v);
                            }
                            r.body(axum::body::Body::from("{\"message\":\"scripted\"}"))
                                .unwrap()
                        }
                    }),
                );
                let listener = tokio::net::TcpListener::from_std({
                    listener.set_nonblocking(true).unwrap();
                    listener
                })
                .unwrap();
                axum::serve(listener, app).await.unwrap();
            });
        });
        (format!("http://{addr}"), seen)
    }

    #[test]
    fn retries_when_busy_splits_when_too_large_drops_when_rejected() {
        let (url, seen) = fake_server(vec![
            (429, Some("0")),
            (413, None),
            (204, None),
            (400, None),
        ]);
        let cfg = InfluxConfig::new(&url, "o", "b", "t");
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let m = SinkMetrics::default();
        let lines: Vec<String> = (0..4).map(|i| format!("m f={i} {i}")).collect();
        let mut log = Instant::now();
        send(
            &agent,
            &format!("{url}/api/v2/write?org=o&bucket=b&precision=ms"),
            &cfg,
            &lines,
            &m,
            &mut log,
        );
        let seen = seen.lock().unwrap().clone();
        // 429 → the same 4 again → 413 → halves: the first written, the second rejected.
        assert_eq!(seen.iter().map(Vec::len).collect::<Vec<_>>(), [4, 4, 2, 2]);
        assert_eq!(seen[2], ["m f=0 0", "m f=1 1"]);
        assert_eq!(m.retries.load(Relaxed), 1);
        assert_eq!(m.lines_written.load(Relaxed), 2);
        assert_eq!(m.dropped_rejected.load(Relaxed), 2);
    }
}
