//! Validation of a gateway file against the known profiles: identity, uplink, agent settings and
//! buses. Every problem is reported at once, each with the path of the offending key; devices and
//! bus time are checked in [`device_check`](crate::device_check).

use std::collections::HashMap;

use protocol::{Point, TopicScheme};

use crate::device_check::{DeviceIndex, check_bus_devices};
use crate::gateway::{AgentSpec, BusKind, BusSpec, GatewaySpec, UplinkSpec};
use crate::link::{Broker, Link};
use crate::locate::{Path, Problem};
use crate::profile_set::ProfileSet;

/// Baud rates an RS-485 installer can set on the devices we support.
pub const STANDARD_BAUDS: [u32; 9] = [
    1200, 2400, 4800, 9600, 14_400, 19_200, 38_400, 57_600, 115_200,
];

/// Checks a gateway spec; returns errors and warnings.
pub fn check_gateway(spec: &GatewaySpec, profiles: &ProfileSet) -> Vec<Problem> {
    let mut out = Vec::new();
    let loc = Path::root().key("location");
    if let Some(p) = Point::new(spec.location.lon, spec.location.lat).problem() {
        out.push(Problem::error(
            loc.key(if p.starts_with("lat") { "lat" } else { "lon" }),
            p,
        ));
    }
    check_uplink(
        &spec.uplink,
        &spec.gateway,
        &Path::root().key("uplink"),
        &mut out,
    );
    check_agent(&spec.agent, &Path::root().key("agent"), &mut out);
    if spec.buses.is_empty()
        && spec.mqtt_sources.is_empty()
        && spec.cameras.is_empty()
        && spec.gpio.is_none()
    {
        out.push(Problem::warning(
            Path::root(),
            "no [[bus]], [[mqtt_source]], [[camera]] or [gpio]: the gateway will only send heartbeats",
        ));
    }
    let mut names: HashMap<&str, Path> = HashMap::new();
    let mut index = DeviceIndex::default();
    for (i, bus) in spec.buses.iter().enumerate() {
        let at = Path::root().at("bus", i);
        if let Err(e) = protocol::id::validate("bus name", &bus.name) {
            out.push(Problem::error(at.key("name"), e.to_string()));
        }
        if let Some(first) = names.get(bus.name.as_str()) {
            let msg = format!("bus name {:?} is used twice", bus.name);
            out.push(Problem::error(at.key("name"), msg).related(first.clone()));
        } else {
            names.insert(&bus.name, at.key("name"));
        }
        check_bus(bus, &at, &mut out);
        check_bus_devices(bus, &at, profiles, &mut index, &mut out);
    }
    crate::mqtt_source::check_sources(&spec.mqtt_sources, &mut index, &mut out);
    crate::camera::check_cameras(
        spec.camera_server.as_ref(),
        spec.evidence.as_ref(),
        &spec.cameras,
        &mut index,
        &mut out,
    );
    crate::rules::check_rules(&spec.rules, &device_metrics(spec, profiles), &mut out);
    if let Some(gpio) = &spec.gpio {
        crate::gpio::check_gpio(gpio, &mut index, &mut out);
    }
    out
}

fn check_uplink(u: &UplinkSpec, gateway: &protocol::GatewayId, at: &Path, out: &mut Vec<Problem>) {
    match Broker::parse(&u.broker) {
        Err(e) => out.push(Problem::error(at.key("broker"), e)),
        Ok(b) if !b.tls && u.tls.is_some() => {
            out.push(Problem::error(
                at.key("tls"),
                "[uplink.tls] needs an mqtts:// broker",
            ));
        }
        Ok(_) => {}
    }
    if u.password.is_some() && u.password_file.is_some() {
        out.push(Problem::error(
            at.key("password_file"),
            "give either password or password_file, not both",
        ));
    }
    if (u.password.is_some() || u.password_file.is_some()) && u.username.is_none() {
        out.push(Problem::error(
            at.key("username"),
            "a password needs a username (MQTT sends none without one)",
        ));
    }
    if let Some(f) = &u.key_file {
        match crate::keyfile::read_key_file(f) {
            Ok(k) if k.gateway != *gateway => out.push(Problem::error(
                at.key("key_file"),
                format!(
                    "{} is the key of gateway {}, not of {gateway}",
                    f.display(),
                    k.gateway
                ),
            )),
            Ok(_) => {}
            Err(d) if d.line == 0 && !f.exists() => out.push(Problem::warning(
                at.key("key_file"),
                format!(
                    "{} is not here; the agent will not start without it",
                    f.display()
                ),
            )),
            Err(d) => out.push(Problem::error(
                at.key("key_file"),
                format!("{}:{}: {}", f.display(), d.line, d.message),
            )),
        }
    }
    if let Some(id) = &u.client_id
        && (id.is_empty() || id.len() > 64 || id.chars().any(|c| c.is_control() || c == ' '))
    {
        out.push(Problem::error(
            at.key("client_id"),
            format!("client_id {id:?} must be 1 to 64 characters without spaces"),
        ));
    }
    if let Err(e) = TopicScheme::new(&u.topic_root) {
        out.push(Problem::error(at.key("topic_root"), e.to_string()));
    }
    if u.keep_alive_s < 5 {
        out.push(Problem::error(
            at.key("keep_alive_s"),
            format!("keep_alive_s is {}; expected at least 5", u.keep_alive_s),
        ));
    }
    if let Some(tls) = &u.tls
        && tls.client_cert_file.is_some() != tls.client_key_file.is_some()
    {
        out.push(Problem::error(
            at.key("tls"),
            "client_cert_file and client_key_file go together",
        ));
    }
}

fn check_agent(a: &AgentSpec, at: &Path, out: &mut Vec<Problem>) {
    let max_items = protocol::Limits::default().max_items;
    let mut range = |key: &str, value: u32, lo: u32, hi: u32| {
        if !(lo..=hi).contains(&value) {
            out.push(Problem::error(
                at.key(key),
                format!("{key} is {value}; expected {lo}..={hi}"),
            ));
        }
    };
    range(
        "batch_max_items",
        a.batch_max_items,
        1,
        u32::try_from(max_items).unwrap_or(u32::MAX),
    );
    range("batch_max_wait_ms", a.batch_max_wait_ms, 10, 600_000);
    range("heartbeat_s", a.heartbeat_s, 1, 3600);
    range("max_silent_s", a.max_silent_s, 1, 86_400);
    range("spool_bulk_max_mb", a.spool_bulk_max_mb, 4, 1_048_576);
    range("spool_event_max_mb", a.spool_event_max_mb, 1, 1_048_576);
    range("spool_bulk_max_age_h", a.spool_bulk_max_age_h, 1, 24 * 400);
    range(
        "spool_event_max_age_h",
        a.spool_event_max_age_h,
        1,
        24 * 400,
    );
    range("replay_items_per_s", a.replay_items_per_s, 10, 1_000_000);
    range("ack_timeout_s", a.ack_timeout_s, 5, 600);
    match a.status_listen.parse::<std::net::SocketAddr>() {
        Err(e) => out.push(Problem::error(
            at.key("status_listen"),
            format!(
                "status_listen {:?} is not an address:port such as 127.0.0.1:9101 ({e})",
                a.status_listen
            ),
        )),
        Ok(addr) if !addr.ip().is_loopback() => out.push(Problem::warning(
            at.key("status_listen"),
            format!(
                "status_listen {addr} is reachable from the network; the status has no access control"
            ),
        )),
        Ok(_) => {}
    }
}

fn check_bus(bus: &BusSpec, at: &Path, out: &mut Vec<Problem>) {
    if let Err(e) = Link::of(bus) {
        // Point at the missing key (which resolves to the [[bus]] header).
        let key = if bus.kind == BusKind::Rtu {
            "port"
        } else {
            "host"
        };
        out.push(Problem::error(at.key(key), e));
    }
    let kind = bus.kind.as_str();
    let misplaced: &[(&str, bool)] = match bus.kind {
        BusKind::Rtu => &[("host", bus.host.is_some())],
        BusKind::Tcp => &[
            ("port", bus.port.is_some()),
            ("baud", bus.baud.is_some()),
            ("parity", bus.parity.is_some()),
            ("data_bits", bus.data_bits.is_some()),
            ("stop_bits", bus.stop_bits.is_some()),
        ],
        BusKind::RtuOverTcp => &[("port", bus.port.is_some())],
    };
    for (key, present) in misplaced {
        if *present {
            let hint = if *key == "host" {
                "; an rtu bus uses port"
            } else {
                ""
            };
            out.push(Problem::error(
                at.key(key),
                format!("{key} does not apply to a {kind} bus{hint}"),
            ));
        }
    }
    if let Some(host) = &bus.host
        && bus.kind != BusKind::Rtu
    {
        let ok = host
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0));
        if !ok {
            out.push(Problem::error(
                at.key("host"),
                format!("host {host:?} must be host:port, e.g. \"192.168.1.20:502\""),
            ));
        }
    }
    if let Some(baud) = bus.baud
        && !STANDARD_BAUDS.contains(&baud)
    {
        let list: Vec<String> = STANDARD_BAUDS.iter().map(u32::to_string).collect();
        out.push(Problem::error(
            at.key("baud"),
            format!(
                "baud {baud} is not a standard rate; expected one of {}",
                list.join(", ")
            ),
        ));
    }
    if let Some(bits) = bus.data_bits
        && bits != 8
    {
        out.push(Problem::error(
            at.key("data_bits"),
            format!("data_bits is {bits}; Modbus RTU sends 8 data bits"),
        ));
    }
    if let Some(stop) = bus.stop_bits
        && !(1..=2).contains(&stop)
    {
        out.push(Problem::error(
            at.key("stop_bits"),
            format!("stop_bits is {stop}; expected 1 or 2"),
        ));
    }
    if !(10..=60_000).contains(&bus.timeout_ms) {
        out.push(Problem::error(
            at.key("timeout_ms"),
            format!("timeout_ms is {}; expected 10..=60000", bus.timeout_ms),
        ));
    }
    if bus.pause_ms > 10_000 {
        out.push(Problem::error(
            at.key("pause_ms"),
            format!("pause_ms is {}; expected at most 10000", bus.pause_ms),
        ));
    }
    if bus.devices.is_empty() {
        out.push(Problem::warning(
            at.clone(),
            format!("bus {:?} has no [[bus.device]]", bus.name),
        ));
    }
}

/// Every device of the gateway with its metrics and writable metrics, for the rule checks.
fn device_metrics(spec: &GatewaySpec, profiles: &ProfileSet) -> crate::rules::DeviceMetrics {
    let mut out = crate::rules::DeviceMetrics::new();
    for d in spec.buses.iter().flat_map(|b| b.devices.iter()) {
        let known = profiles.get(&d.profile).map(|p| {
            let metrics = p
                .fields
                .iter()
                .map(|f| f.metric.clone())
                .chain(p.derived.iter().map(|x| x.metric.clone()))
                .collect();
            let writable = p
                .fields
                .iter()
                .filter(|f| f.writable)
                .map(|f| f.metric.clone())
                .collect();
            (metrics, writable)
        });
        out.insert(d.id.clone(), known);
    }
    for d in spec.mqtt_sources.iter().flat_map(|s| s.devices.iter()) {
        let metrics = d.metrics.iter().map(|m| m.metric.clone()).collect();
        out.insert(d.id.clone(), Some((metrics, Vec::new())));
    }
    for c in &spec.cameras {
        out.insert(c.id.clone(), Some((Vec::new(), Vec::new())));
    }
    if let Some(g) = &spec.gpio {
        let metric = |m: &str| protocol::MetricId::new(m).ok();
        for i in &g.inputs {
            let m = metric(i.kind.event_type()).into_iter().collect();
            out.insert(i.id.clone(), Some((m, Vec::new())));
        }
        for c in &g.counters {
            out.insert(c.id.clone(), Some((vec![c.metric.clone()], Vec::new())));
        }
        for o in &g.outputs {
            let m: Vec<_> = metric(crate::gpio::OUTPUT_METRIC).into_iter().collect();
            out.insert(o.id.clone(), Some((m.clone(), m)));
        }
    }
    out
}
