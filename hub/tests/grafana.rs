//! The Grafana provisioning in `dashboards/grafana/` asks InfluxDB only for what the hub's sink
//! really writes.
//!
//! The schema is not written down here: the test runs the real path. It loads the shipped example
//! gateways (`firmware-config/gateways/*.toml`) with the built-in device profiles, starts a hub
//! (`hub::start`, embedded broker) that copies to a fake InfluxDB, publishes each gateway's
//! presence (its real inventory), one envelope with a reading of every metric its devices produce
//! (values decoded by the profiles' own decoder) and the events the agents raise, and a heartbeat;
//! and records the line protocol the sink posts. Measurements, tag keys, tag values and field
//! keys come from those lines.
//!
//! Then every Flux query of every dashboard (panel targets, nested row panels, templating
//! variables) is scanned: `r._measurement == "..."`, `r._field == "..."`, tag columns (`r.asset`,
//! `r["road_segment"]`), literal tag values (`r.event == "linkDown"`), column arguments
//! (`group(columns: [...])`, `keep`, `pivot`, `distinct(column:)`, `schema.tagValues(tag:)`) must
//! name what the sink wrote for the measurements the query selects. Also checked: every datasource
//! reference is the provisioned uid, dashboards parse and have unique uids, Grafana variables used
//! in queries are defined, imports are present for the packages used.

// Helpers outside #[test] functions unwrap too: a failure there is a broken test.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use firmware_config::{ProfileSet, Raw, load_gateway};
use protocol::Value;
use protocol::topic::Channel;
use serde_json::{Value as Json, json};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn grafana_dir() -> PathBuf {
    workspace().join("dashboards/grafana")
}

// ---------------------------------------------------------------------------------------------
// What the sink writes.

/// One measurement as written: tag keys with the values seen, field keys.
#[derive(Debug, Default)]
struct Measurement {
    tags: BTreeMap<String, BTreeSet<String>>,
    fields: BTreeSet<String>,
}

#[derive(Debug, Default)]
struct Schema {
    measurements: BTreeMap<String, Measurement>,
}

/// Splits one line of line protocol into measurement, tags and field keys (unescaped).
fn parse_line(line: &str) -> (String, Vec<(String, String)>, Vec<String>) {
    let mut chars = line.chars().peekable();
    // Reads up to (not including) an unescaped character of `stops`; returns it and the stop.
    let mut take = |stops: &[char]| -> (String, Option<char>) {
        let mut out = String::new();
        while let Some(c) = chars.next() {
            if c == '\\' {
                if let Some(n) = chars.next() {
                    out.push(n);
                }
            } else if stops.contains(&c) {
                return (out, Some(c));
            } else if c == '"' {
                // A string field value: up to the closing quote.
                out.push(c);
                while let Some(c) = chars.next() {
                    if c == '\\' {
                        chars.next();
                    } else if c == '"' {
                        break;
                    }
                }
                out.push('"');
            } else {
                out.push(c);
            }
        }
        (out, None)
    };
    let (measurement, mut stop) = take(&[',', ' ']);
    let mut tags = Vec::new();
    while stop == Some(',') {
        let (k, s) = take(&['=']);
        assert_eq!(s, Some('='), "tag without a value in {line}");
        let (v, s) = take(&[',', ' ']);
        tags.push((k, v));
        stop = s;
    }
    assert_eq!(stop, Some(' '), "no fields in {line}");
    let mut fields = Vec::new();
    loop {
        let (k, s) = take(&['=']);
        assert_eq!(s, Some('='), "field without a value in {line}");
        let (_value, s) = take(&[',', ' ']);
        fields.push(k);
        if s != Some(',') {
            assert_eq!(s, Some(' '), "no timestamp in {line}");
            break;
        }
    }
    (measurement, tags, fields)
}

impl Schema {
    fn from_lines(lines: &[String]) -> Self {
        let mut s = Schema::default();
        for line in lines {
            let (m, tags, fields) = parse_line(line);
            let m = s.measurements.entry(m).or_default();
            for (k, v) in tags {
                m.tags.entry(k).or_default().insert(v);
            }
            m.fields.extend(fields);
        }
        s
    }
}

/// A fake InfluxDB 2 write endpoint: records the (gunzipped) lines of every request, answers 204.
fn fake_influx() -> (String, Arc<Mutex<Vec<String>>>) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = lines.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let seen = seen.clone();
            std::thread::spawn(move || serve(stream, &seen));
        }
    });
    (url, lines)
}

fn serve(stream: TcpStream, lines: &Mutex<Vec<String>>) {
    let mut out = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    loop {
        let mut request = String::new();
        if reader.read_line(&mut request).unwrap_or(0) == 0 {
            return;
        }
        assert!(
            request.starts_with("POST /api/v2/write?"),
            "the sink posted {request:?}"
        );
        let (mut length, mut gzip, mut chunked) = (0usize, false, false);
        loop {
            let mut h = String::new();
            reader.read_line(&mut h).unwrap();
            let h = h.trim_end().to_ascii_lowercase();
            if h.is_empty() {
                break;
            }
            if let Some(v) = h.strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
            gzip |= h == "content-encoding: gzip";
            chunked |= h == "transfer-encoding: chunked";
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                let mut size = String::new();
                reader.read_line(&mut size).unwrap();
                let n = usize::from_str_radix(size.trim(), 16).unwrap();
                let mut chunk = vec![0; n + 2];
                reader.read_exact(&mut chunk).unwrap();
                body.extend_from_slice(&chunk[..n]);
                if n == 0 {
                    break;
                }
            }
        } else {
            body.resize(length, 0);
            reader.read_exact(&mut body).unwrap();
        }
        let mut text = String::new();
        if gzip {
            flate2::read::GzDecoder::new(&body[..])
                .read_to_string(&mut text)
                .unwrap();
        } else {
            text = String::from_utf8(body).unwrap();
        }
        lines
            .lock()
            .unwrap()
            .extend(text.lines().map(str::to_owned));
        out.write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
            .unwrap();
    }
}

/// A loopback address whose port was free a moment ago, below Linux's ephemeral range so that no
/// outgoing connection takes it before the hub binds it.
fn free_addr() -> std::net::SocketAddr {
    let start = 20_000 + (std::process::id() * 7919) % 12_000;
    (0..12_000)
        .map(|i| 20_000 + (start - 20_000 + i) % 12_000)
        .map(|port| std::net::SocketAddr::from(([127, 0, 0, 1], port as u16)))
        .find(|a| TcpListener::bind(a).is_ok())
        .unwrap()
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "waited 30 s for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Publishes each (topic, payload) to the hub's broker at QoS 1, as a gateway, and waits for every
/// PUBACK.
async fn publish(port: u16, msgs: Vec<(String, Vec<u8>)>) {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let id = format!("grafana-test-{}", N.fetch_add(1, Relaxed));
    let mut opts = MqttOptions::new(id, "127.0.0.1", port);
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut events) = AsyncClient::new(opts, 100);
    let n = msgs.len();
    tokio::spawn(async move {
        for (topic, payload) in msgs {
            client
                .publish(topic, QoS::AtLeastOnce, false, payload)
                .await
                .unwrap();
        }
    });
    let mut acked = 0;
    while acked < n {
        let event = tokio::time::timeout(Duration::from_secs(10), events.poll())
            .await
            .expect("the broker answers")
            .unwrap();
        if let Event::Incoming(Packet::PubAck(_)) = event {
            acked += 1;
        }
    }
}

/// Event types the agent raises from literals of its own (edge-agent is not a dependency of the
/// hub): each is checked to be still in the agent's source.
const AGENT_EVENTS: [(&str, &str); 2] = [
    ("linkDown", "edge-agent/src/poller.rs"),
    ("plate", "edge-agent/src/camera/parse.rs"),
];

fn reading(device: &str, metric: &str, value: &Value, at: &Json) -> Json {
    json!({"kind": "reading", "device": device, "metric": metric, "observedAt": at, "value": value})
}

fn event(device: &str, event: &str, phase: &str, at: &Json) -> Json {
    json!({"kind": "event", "device": device, "event": event, "phase": phase, "observedAt": at,
           "attributes": {"note": "grafana test"}})
}

/// A number inside the field's plausible range.
fn plausible(range: Option<(f64, f64)>) -> Value {
    Value::Number(range.map_or(1.0, |(lo, hi)| (lo + hi) / 2.0))
}

/// Runs the shipped gateways' traffic through a hub with the InfluxDB sink; returns the lines.
fn sink_lines() -> Vec<String> {
    let profiles = ProfileSet::builtin().unwrap_or_else(|d| panic!("{d:#?}"));
    let mut files: Vec<PathBuf> = std::fs::read_dir(workspace().join("firmware-config/gateways"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    assert!(!files.is_empty());
    for (event, file) in AGENT_EVENTS {
        let source = std::fs::read_to_string(workspace().join(file)).unwrap();
        assert!(
            source.contains(&format!("\"{event}\"")),
            "{file} no longer raises {event:?}: update this test"
        );
    }

    let now = protocol::Timestamp::now();
    let at = serde_json::to_value(now).unwrap();
    let boot = "67e55044-10b1-426f-9247-bb680e5fe0c8";
    let limits = protocol::Limits::default();
    let topics = protocol::TopicScheme::new(protocol::topic::DEFAULT_ROOT).unwrap();
    let (mut presences, mut data) = (Vec::new(), Vec::new());
    for file in &files {
        let config = load_gateway(file, &profiles).unwrap_or_else(|d| panic!("{d:#?}"));
        let gw = config.gateway.as_str().to_owned();
        let presence: protocol::Presence = serde_json::from_value(json!({
            "v": 1, "gateway": gw, "boot": boot, "state": "online", "sentAt": at, "clock": "synced",
            "devices": config.inventory(),
        }))
        .unwrap();
        presences.push((
            topics.topic(&config.gateway, Channel::State),
            protocol::encode(&presence, &limits).unwrap(),
        ));
        let mut items = Vec::new();
        // Polled devices: every field as the profile decodes it, every derived metric, and the
        // link events the poller raises.
        for (_, d) in config.devices() {
            for f in &d.profile.fields {
                // Zeros, else "01" in every register (text fields), else a number in range.
                let size = usize::from(f.size());
                let (bits, zeros, text) = (vec![false; size], vec![0u16; size], vec![0x3031; size]);
                let decoded = if f.table.is_bits() {
                    firmware_config::decode(f, Raw::Bits(&bits))
                } else {
                    firmware_config::decode(f, Raw::Words(&zeros))
                        .or_else(|_| firmware_config::decode(f, Raw::Words(&text)))
                };
                let value = match decoded {
                    Ok(v) => v,
                    Err(_) if f.is_numeric() => plausible(f.range()),
                    Err(e) => panic!("{}: {} does not decode: {e:?}", d.id, f.metric),
                };
                items.push(reading(d.id.as_str(), f.metric.as_str(), &value, &at));
            }
            for x in &d.profile.derived {
                let value = plausible(x.range());
                items.push(reading(d.id.as_str(), x.metric.as_str(), &value, &at));
            }
            for phase in ["start", "end"] {
                items.push(event(d.id.as_str(), "linkDown", phase, &at));
            }
        }
        // Devices on a local MQTT broker (LoRa bins and the like): numbers.
        for s in &config.mqtt_sources {
            for d in &s.devices {
                for m in &d.spec.metrics {
                    items.push(reading(
                        d.info.device.as_str(),
                        m.metric.as_str(),
                        &Value::Number(1.0),
                        &at,
                    ));
                }
            }
        }
        if let Some(g) = &config.gpio {
            for i in &g.inputs {
                let name = i.spec.kind.event_type();
                items.push(reading(
                    i.info.device.as_str(),
                    name,
                    &Value::Bool(true),
                    &at,
                ));
                for phase in ["start", "end"] {
                    items.push(event(i.info.device.as_str(), name, phase, &at));
                }
            }
            for c in &g.counters {
                let metric = c.spec.metric.as_str();
                items.push(reading(
                    c.info.device.as_str(),
                    metric,
                    &Value::Number(0.2),
                    &at,
                ));
            }
            for o in &g.outputs {
                items.push(reading(
                    o.info.device.as_str(),
                    firmware_config::gpio::OUTPUT_METRIC,
                    &Value::Bool(false),
                    &at,
                ));
            }
        }
        for r in &config.rules {
            for phase in ["start", "end"] {
                items.push(event(r.device.as_str(), &r.event, phase, &at));
            }
        }
        for c in config.cameras.iter().flat_map(|c| &c.cameras) {
            items.push(event(c.id.as_str(), "plate", "instant", &at));
        }
        let envelope: protocol::Envelope = serde_json::from_value(json!({
            "v": 1, "gateway": gw, "boot": boot, "seq": 0, "sentAt": at, "clock": "synced",
            "items": items,
        }))
        .unwrap();
        data.push((
            topics.topic(&config.gateway, Channel::Up),
            protocol::encode(&envelope, &limits).unwrap(),
        ));
        // A heartbeat: if the sink ever writes gateway health, its measurement shows up here.
        let heartbeat: protocol::Heartbeat = serde_json::from_value(json!({
            "v": 1, "gateway": gw, "boot": boot, "sentAt": at, "clock": "synced", "uptimeS": 60,
            "cpuTempC": 48.5, "memUsedBytes": 1000000, "diskFreeBytes": 1000000000,
            "spool": {"depth": 3, "bytes": 1000, "dropped": 1},
        }))
        .unwrap();
        data.push((
            topics.topic(&config.gateway, Channel::Status),
            protocol::encode(&heartbeat, &limits).unwrap(),
        ));
    }

    let (url, lines) = fake_influx();
    let mut influx = hub::influx::InfluxConfig::new(&url, "city", "iot", "token");
    influx.max_wait = Duration::from_millis(50);
    let dir = tempfile::tempdir().unwrap();
    let mqtt = free_addr();
    let n = files.len() as u64;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let metrics = rt.block_on(async {
        let hub = hub::start(hub::HubConfig {
            client_id: "hub-grafana-test".into(),
            auth: hub::keys::AuthPolicy::AllowUnsigned,
            influx: Some(influx),
            rate_limit: None,
            ..hub::HubConfig::new(
                "127.0.0.1:0".parse().unwrap(),
                dir.path(),
                hub::MqttMode::Embedded { listen: mqtt },
            )
        })
        .await
        .unwrap();
        let m = hub.metrics.clone();
        until("the hub's ingest to be ready", || {
            m.ingest_ready.load(Relaxed)
        })
        .await;
        // Inventories first: the sink tags a device's lines from the asset registry.
        publish(mqtt.port(), presences).await;
        until("every presence stored", || m.presences.load(Relaxed) >= n).await;
        publish(mqtt.port(), data).await;
        until("every envelope and heartbeat stored", || {
            m.envelopes_stored.load(Relaxed) >= n && m.heartbeats.load(Relaxed) >= n
        })
        .await;
        hub.stop().await;
        m
    });
    // The writer has stopped; the sink flushes what it holds and stops too.
    let sink = metrics.influx.get().unwrap().clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut settled_since: Option<(usize, Instant)> = None;
    loop {
        let n = lines.lock().unwrap().len();
        let done = n > 0
            && sink.queued_lines.load(Relaxed) == 0
            && sink.lines_written.load(Relaxed) == n as u64;
        match settled_since {
            Some((m, t)) if m == n && done && t.elapsed() > Duration::from_millis(300) => break,
            Some((m, _)) if m == n && done => {}
            _ => settled_since = Some((n, Instant::now())),
        }
        assert!(
            Instant::now() < deadline,
            "the sink did not finish: {n} lines"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(sink.dropped_queue_full.load(Relaxed), 0);
    assert_eq!(sink.dropped_rejected.load(Relaxed), 0);
    assert_eq!(sink.skipped_bad_quality.load(Relaxed), 0);
    lines.lock().unwrap().clone()
}

// ---------------------------------------------------------------------------------------------
// Flux, as far as the dashboards use it.

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Regex(String),
    Num,
    /// A Grafana variable outside a string: `${name}` or `$name`.
    Var(String),
    Punct(&'static str),
}

fn tokenize(q: &str) -> Result<Vec<Tok>, String> {
    const PUNCT: [&str; 24] = [
        "|>", "=>", "==", "!=", "=~", "!~", "<=", ">=", "<-", "(", ")", "[", "]", "{", "}", ",",
        ":", ".", "+", "-", "*", "/", "<", ">",
    ];
    let c: Vec<char> = q.chars().collect();
    let mut i = 0;
    let mut out = Vec::new();
    while i < c.len() {
        let ch = c[i];
        if ch.is_whitespace() {
            i += 1;
        } else if ch == '/' && c.get(i + 1) == Some(&'/') {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && matches!(out.last(), Some(Tok::Punct("=~")) | Some(Tok::Punct("!~")))
        {
            let mut s = String::new();
            i += 1;
            while i < c.len() && c[i] != '/' {
                if c[i] == '\\' {
                    s.push(c[i]);
                    i += 1;
                }
                s.push(c[i]);
                i += 1;
            }
            if i >= c.len() {
                return Err("unterminated regex".into());
            }
            i += 1;
            out.push(Tok::Regex(s));
        } else if ch == '"' {
            let mut s = String::new();
            i += 1;
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' {
                    i += 1;
                }
                s.push(c[i]);
                i += 1;
            }
            if i >= c.len() {
                return Err("unterminated string".into());
            }
            i += 1;
            out.push(Tok::Str(s));
        } else if ch == '$' {
            let mut s = String::new();
            i += 1;
            if c.get(i) == Some(&'{') {
                i += 1;
                while i < c.len() && c[i] != '}' {
                    s.push(c[i]);
                    i += 1;
                }
                i += 1;
            } else {
                while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                    s.push(c[i]);
                    i += 1;
                }
            }
            out.push(Tok::Var(s));
        } else if ch.is_ascii_digit() {
            while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '.' || c[i] == ':') {
                i += 1;
            }
            out.push(Tok::Num);
        } else if ch.is_alphabetic() || ch == '_' {
            let mut s = String::new();
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                s.push(c[i]);
                i += 1;
            }
            out.push(Tok::Ident(s));
        } else {
            let rest: String = c[i..c.len().min(i + 2)].iter().collect();
            let Some(p) = PUNCT.iter().find(|p| rest.starts_with(**p)) else {
                return Err(format!("unexpected {ch:?}"));
            };
            i += p.chars().count();
            out.push(Tok::Punct(p));
        }
    }
    Ok(out)
}

/// Grafana variables a query uses, inside or outside strings and regexes: `${name}`,
/// `${name:format}`, `$name`.
fn variables(q: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = q;
    while let Some(i) = rest.find('$') {
        rest = &rest[i + 1..];
        let name: String = match rest.strip_prefix('{') {
            Some(r) => r.chars().take_while(|c| *c != '}' && *c != ':').collect(),
            None => rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect(),
        };
        if !name.is_empty() {
            out.insert(name);
        }
    }
    out
}

/// What one query names.
#[derive(Debug, Default)]
struct Names {
    /// `r._measurement == "m"`, `measurement: "m"`.
    measurements: BTreeSet<String>,
    /// `r._measurement != "m"`.
    excluded: BTreeSet<String>,
    /// `r._field == "f"` and `!=`, `field: "f"`.
    fields: BTreeSet<String>,
    /// `r.c`, `r["c"]`, and column arguments (`columns: [...]`, `column:`, `tag:`, ...).
    columns: BTreeSet<String>,
    /// `r.tag == "literal"` (and `!=`).
    literals: BTreeSet<(String, String)>,
    /// Columns the query makes itself (record keys: `{r with age_s: ...}`).
    made: BTreeSet<String>,
    /// Packages used (`schema.tagValues`) and imported.
    used_packages: BTreeSet<String>,
    imports: BTreeSet<String>,
    /// `v.x`.
    grafana_values: BTreeSet<String>,
    buckets: Vec<String>,
    problems: Vec<String>,
}

const PACKAGES: [(&str, &str); 7] = [
    ("schema", "influxdata/influxdb/schema"),
    ("strings", "strings"),
    ("date", "date"),
    ("math", "math"),
    ("types", "types"),
    ("array", "array"),
    ("experimental", "experimental"),
];

fn scan(q: &str) -> Names {
    let mut n = Names::default();
    let t = match tokenize(q) {
        Ok(t) => t,
        Err(e) => {
            n.problems.push(e);
            return n;
        }
    };
    let ident = |i: usize| match t.get(i) {
        Some(Tok::Ident(s)) => Some(s.as_str()),
        _ => None,
    };
    let string = |i: usize| match t.get(i) {
        Some(Tok::Str(s)) => Some(s.clone()),
        _ => None,
    };
    let punct = |i: usize, p: &str| matches!(t.get(i), Some(Tok::Punct(x)) if *x == p);
    let mut stack: Vec<&str> = Vec::new();
    let mut i = 0;
    while i < t.len() {
        match &t[i] {
            Tok::Punct(p @ ("(" | "[" | "{")) => stack.push(*p),
            Tok::Punct(")" | "]" | "}") => {
                stack.pop();
            }
            Tok::Punct("=>")
                if !(i >= 3
                    && punct(i - 3, "(")
                    && ident(i - 2) == Some("r")
                    && punct(i - 1, ")")) =>
            {
                n.problems
                    .push("a function takes anything but (r): not checked".into());
            }
            Tok::Ident(k) if k == "import" => {
                if let Some(s) = string(i + 1) {
                    n.imports.insert(s);
                }
            }
            Tok::Ident(r) if r == "r" && (punct(i + 1, ".") || punct(i + 1, "[")) => {
                let (col, next) = if punct(i + 1, ".") {
                    (ident(i + 2).map(str::to_owned), i + 3)
                } else {
                    (string(i + 2), i + 4)
                };
                let Some(col) = col else {
                    n.problems
                        .push(format!("cannot read the column at token {i}"));
                    i += 1;
                    continue;
                };
                let op = [("==", true), ("!=", false)]
                    .into_iter()
                    .find(|(p, _)| punct(next, p));
                let literal = op.and_then(|(_, eq)| string(next + 1).map(|s| (eq, s)));
                match (col.as_str(), literal) {
                    ("_measurement", Some((true, m))) => {
                        n.measurements.insert(m);
                    }
                    ("_measurement", Some((false, m))) => {
                        n.excluded.insert(m);
                    }
                    ("_field", Some((_, f))) => {
                        n.fields.insert(f);
                    }
                    (_, Some((_, v))) => {
                        n.literals.insert((col.clone(), v));
                    }
                    _ => {}
                }
                n.columns.insert(col);
            }
            Tok::Ident(v) if v == "v" && punct(i + 1, ".") => {
                if let Some(x) = ident(i + 2) {
                    n.grafana_values.insert(x.to_owned());
                }
            }
            Tok::Ident(pkg) if punct(i + 1, ".") && PACKAGES.iter().any(|(p, _)| p == pkg) => {
                n.used_packages.insert(pkg.clone());
            }
            Tok::Ident(key) if punct(i + 1, ":") => {
                let key = key.as_str();
                if stack.last() == Some(&"{") {
                    n.made.insert(key.to_owned());
                } else if key == "bucket" {
                    n.buckets.push(match (ident(i + 2), ident(i + 4)) {
                        (Some(a), Some(b)) if punct(i + 3, ".") => format!("{a}.{b}"),
                        _ => format!("{:?}", t.get(i + 2)),
                    });
                } else if let Some(s) = string(i + 2) {
                    match key {
                        "measurement" => {
                            n.measurements.insert(s);
                        }
                        "field" => {
                            n.fields.insert(s);
                        }
                        "column" | "tag" | "valueColumn" | "timeColumn" | "timeSrc" | "timeDst" => {
                            n.columns.insert(s);
                        }
                        _ => {}
                    }
                } else if matches!(key, "columns" | "rowKey" | "columnKey") {
                    if !punct(i + 2, "[") {
                        n.problems.push(format!("{key}: is not a list of strings"));
                    }
                    let mut j = i + 3;
                    while let Some(s) = string(j) {
                        n.columns.insert(s);
                        j += if punct(j + 1, ",") { 2 } else { 1 };
                    }
                    if !punct(j, "]") {
                        n.problems.push(format!("{key}: is not a list of strings"));
                    }
                }
            }
            _ => {}
        }
        i += 1;
    }
    n
}

/// Columns every Flux table from InfluxDB has.
const STANDARD: [&str; 6] = [
    "_time",
    "_value",
    "_field",
    "_measurement",
    "_start",
    "_stop",
];
/// What Grafana's Flux datasource defines in `v`.
const GRAFANA_V: [&str; 4] = [
    "timeRangeStart",
    "timeRangeStop",
    "windowPeriod",
    "defaultBucket",
];

/// Problems of one query against the schema; `vars` are the dashboard's variables.
fn check_query(q: &str, schema: &Schema, vars: &BTreeSet<String>) -> Vec<String> {
    let n = scan(q);
    let mut bad = n.problems.clone();
    for m in n.measurements.iter().chain(&n.excluded) {
        if !schema.measurements.contains_key(m) {
            bad.push(format!(
                "measurement {m:?} is not written (written: {:?})",
                schema.measurements.keys().collect::<Vec<_>>()
            ));
        }
    }
    let scope: Vec<&Measurement> = if n.measurements.is_empty() {
        schema.measurements.values().collect()
    } else {
        n.measurements
            .iter()
            .filter_map(|m| schema.measurements.get(m))
            .collect()
    };
    let fields: BTreeSet<&str> = scope
        .iter()
        .flat_map(|m| m.fields.iter().map(String::as_str))
        .collect();
    let tags: BTreeMap<&str, BTreeSet<&str>> =
        scope
            .iter()
            .flat_map(|m| &m.tags)
            .fold(BTreeMap::new(), |mut acc, (k, vs)| {
                acc.entry(k.as_str())
                    .or_insert_with(BTreeSet::new)
                    .extend(vs.iter().map(String::as_str));
                acc
            });
    for f in &n.fields {
        if !fields.contains(f.as_str()) {
            bad.push(format!(
                "field {f:?} is not written in {:?} (fields: {fields:?})",
                n.measurements
            ));
        }
    }
    for c in &n.columns {
        let known = STANDARD.contains(&c.as_str())
            || tags.contains_key(c.as_str())
            // A field becomes a column after pivot.
            || fields.contains(c.as_str())
            || n.made.contains(c);
        if !known {
            bad.push(format!(
                "column {c:?} is not a tag of {:?} (tags: {:?})",
                n.measurements,
                tags.keys().collect::<Vec<_>>()
            ));
        }
    }
    for (tag, value) in &n.literals {
        if let Some(values) = tags.get(tag.as_str())
            && !value.contains('$')
            && !values.contains(value.as_str())
        {
            bad.push(format!(
                "{tag} == {value:?}: the sink writes no such {tag} (seen: {values:?})"
            ));
        }
    }
    for p in &n.used_packages {
        let path = PACKAGES.iter().find(|(k, _)| k == p).unwrap().1;
        if !n.imports.contains(path) {
            bad.push(format!("{p}. is used without import {path:?}"));
        }
    }
    for x in &n.grafana_values {
        if !GRAFANA_V.contains(&x.as_str()) {
            bad.push(format!("v.{x} is not defined by Grafana's Flux datasource"));
        }
    }
    for b in &n.buckets {
        if b != "v.defaultBucket" {
            bad.push(format!(
                "bucket: {b}: use v.defaultBucket (the datasource's bucket)"
            ));
        }
    }
    if !q.contains("from(bucket:") && !q.contains("schema.") {
        bad.push("reads no bucket".into());
    }
    for v in variables(q) {
        if !vars.contains(&v) {
            bad.push(format!("Grafana variable ${v} is not defined"));
        }
    }
    bad
}

// ---------------------------------------------------------------------------------------------
// The provisioning files.

/// `key: value` of the first line with that key (YAML as far as these files need).
fn yaml_value(text: &str, key: &str) -> Option<String> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .map(|v| v.trim().trim_matches('"').to_owned())
}

fn datasource_uid() -> String {
    let path = grafana_dir().join("provisioning/datasources/influxdb.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(yaml_value(&text, "type").as_deref(), Some("influxdb"));
    assert_eq!(yaml_value(&text, "version").as_deref(), Some("Flux"));
    for (key, var) in [
        ("url", "INFLUX_URL"),
        ("organization", "INFLUX_ORG"),
        ("defaultBucket", "INFLUX_BUCKET"),
        ("token", "INFLUX_TOKEN"),
    ] {
        assert_eq!(
            yaml_value(&text, key),
            Some(format!("${{{var}}}")),
            "{key} in {}",
            path.display()
        );
    }
    yaml_value(&text, "uid").unwrap()
}

fn dashboards() -> Vec<(PathBuf, Json)> {
    let dir = grafana_dir().join("dashboards");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let json = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{}: not JSON: {e}", p.display()));
            (p, json)
        })
        .collect()
}

/// Every panel, also those inside (collapsed) rows.
fn panels(list: &Json, out: &mut Vec<Json>) {
    for p in list.as_array().into_iter().flatten() {
        out.push(p.clone());
        panels(&p["panels"], out);
    }
}

/// Every `datasource` object in the document.
fn datasource_refs(v: &Json, out: &mut Vec<Json>) {
    match v {
        Json::Object(m) => {
            for (k, x) in m {
                if k == "datasource" {
                    out.push(x.clone());
                }
                datasource_refs(x, out);
            }
        }
        Json::Array(a) => a.iter().for_each(|x| datasource_refs(x, out)),
        _ => {}
    }
}

/// (where, query) of every Flux query of a dashboard, and its variable names.
fn queries(d: &Json) -> (Vec<(String, String)>, BTreeSet<String>) {
    let mut out = Vec::new();
    let mut vars = BTreeSet::new();
    for v in d["templating"]["list"].as_array().into_iter().flatten() {
        let name = v["name"].as_str().unwrap().to_owned();
        vars.insert(name.clone());
        if v["type"] == "query" {
            let q = v["query"]
                .as_str()
                .or_else(|| v["query"]["query"].as_str())
                .unwrap_or_else(|| panic!("variable {name} has no query"));
            out.push((format!("variable {name}"), q.to_owned()));
        }
    }
    let mut all = Vec::new();
    panels(&d["panels"], &mut all);
    for p in &all {
        let kind = p["type"].as_str().unwrap_or("");
        let title = p["title"].as_str().unwrap_or("").to_owned();
        let targets = p["targets"].as_array().cloned().unwrap_or_default();
        if !matches!(kind, "row" | "text") {
            assert!(!targets.is_empty(), "panel {title:?} has no query");
        }
        for t in targets {
            let q = t["query"]
                .as_str()
                .unwrap_or_else(|| panic!("panel {title:?}: a target without a Flux query"));
            out.push((
                format!("panel {title:?} target {}", t["refId"]),
                q.to_owned(),
            ));
        }
    }
    (out, vars)
}

#[test]
fn dashboards_ask_only_for_what_the_sink_writes() {
    let lines = sink_lines();
    let schema = Schema::from_lines(&lines);
    for (name, m) in &schema.measurements {
        eprintln!(
            "{name}: tags {:?}, fields {:?}",
            m.tags.keys().collect::<Vec<_>>(),
            m.fields
        );
    }
    let uid = datasource_uid();
    let provider =
        std::fs::read_to_string(grafana_dir().join("provisioning/dashboards/city.yaml")).unwrap();
    assert_eq!(yaml_value(&provider, "type").as_deref(), Some("file"));
    assert!(yaml_value(&provider, "path").is_some());

    let dashboards = dashboards();
    assert!(dashboards.len() >= 6, "{} dashboards", dashboards.len());
    let mut uids = BTreeSet::new();
    let mut problems = Vec::new();
    let mut checked = 0;
    for (path, d) in &dashboards {
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let duid = d["uid"].as_str().unwrap_or_default();
        assert!(!duid.is_empty(), "{file}: no uid");
        assert!(uids.insert(duid.to_owned()), "{file}: uid {duid} twice");
        assert!(
            !d["title"].as_str().unwrap_or_default().is_empty(),
            "{file}: no title"
        );
        assert!(
            d["schemaVersion"].as_u64().unwrap_or(0) >= 36,
            "{file}: schemaVersion"
        );
        assert_eq!(d["refresh"], "30s", "{file}: refresh");
        assert!(
            d["time"]["from"].is_string() && d["time"]["to"].is_string(),
            "{file}: time"
        );
        let mut all = Vec::new();
        panels(&d["panels"], &mut all);
        let mut ids = BTreeSet::new();
        for p in &all {
            let id = p["id"]
                .as_u64()
                .unwrap_or_else(|| panic!("{file}: a panel has no id"));
            assert!(ids.insert(id), "{file}: panel id {id} twice");
        }
        let mut refs = Vec::new();
        datasource_refs(d, &mut refs);
        for r in refs {
            let ok =
                r["uid"] == uid.as_str() || (r["type"] == "grafana" && r["uid"] == "-- Grafana --");
            assert!(
                ok,
                "{file}: datasource {r} is not the provisioned uid {uid}"
            );
        }
        let (qs, vars) = queries(d);
        for (at, q) in qs {
            checked += 1;
            for p in check_query(&q, &schema, &vars) {
                problems.push(format!(
                    "{file}: {at}: {p}\n    {}",
                    q.replace('\n', "\n    ")
                ));
            }
        }
    }
    assert!(checked >= 40, "only {checked} queries found");
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

#[test]
fn the_query_check_catches_misspellings() {
    let mut schema = Schema::default();
    let m = schema
        .measurements
        .entry("waterlogging".into())
        .or_default();
    m.fields.insert("waterDepth".into());
    m.tags
        .entry("asset".into())
        .or_default()
        .insert("wl-1".into());
    let e = schema.measurements.entry("event".into()).or_default();
    e.fields.insert("attributes".into());
    e.tags
        .entry("event".into())
        .or_default()
        .insert("linkDown".into());
    let vars: BTreeSet<String> = ["asset".to_owned()].into();
    let ok = r#"from(bucket: v.defaultBucket)
  |> range(start: v.timeRangeStart, stop: v.timeRangeStop)
  |> filter(fn: (r) => r._measurement == "waterlogging" and r._field == "waterDepth")
  |> filter(fn: (r) => r["asset"] =~ /^${asset:regex}$/)
  |> group(columns: ["asset"])"#;
    assert_eq!(check_query(ok, &schema, &vars), Vec::<String>::new());
    for (wrong, right) in [
        ("\"waterDepht\"", "\"waterDepth\""),
        ("\"water_logging\"", "\"waterlogging\""),
        ("r[\"assets\"]", "r[\"asset\"]"),
        ("columns: [\"assets\"]", "columns: [\"asset\"]"),
        ("${assets:regex}", "${asset:regex}"),
        ("bucket: \"iot\"", "bucket: v.defaultBucket"),
        ("v.timeRangeEnd", "v.timeRangeStop"),
    ] {
        let q = ok.replacen(right, wrong, 1);
        assert_ne!(q, ok);
        assert!(
            !check_query(&q, &schema, &vars).is_empty(),
            "not caught: {wrong}"
        );
    }
    let ev = r#"from(bucket: v.defaultBucket) |> range(start: -1h) |> filter(fn: (r) => r._measurement == "event" and r.event == "linkdown")"#;
    assert_eq!(check_query(ev, &schema, &vars).len(), 1);
    let tags = "import \"influxdata/influxdb/schema\"\nschema.measurementTagValues(bucket: v.defaultBucket, measurement: \"waterlogging\", tag: \"grid\")";
    assert_eq!(check_query(tags, &schema, &vars).len(), 1);
    let no_import = "schema.tagValues(bucket: v.defaultBucket, tag: \"asset\")";
    assert_eq!(check_query(no_import, &schema, &vars).len(), 1);
}

#[test]
fn line_protocol_is_split_with_its_escapes() {
    let (m, tags, fields) = parse_line(
        r#"event,gateway=gw-a,asset=lamp\ 1,road_segment=rd\,1 attributes="{\"a\":\"x, y=z\"}",evidence=0i 1795327202000"#,
    );
    assert_eq!(m, "event");
    assert_eq!(
        tags,
        [
            ("gateway".to_owned(), "gw-a".to_owned()),
            ("asset".to_owned(), "lamp 1".to_owned()),
            ("road_segment".to_owned(), "rd,1".to_owned())
        ]
    );
    assert_eq!(fields, ["attributes", "evidence"]);
}
