//! Commissioning tools for installers on site: `probe` reads one device of a gateway file and shows
//! every request with its raw registers and the decoded values; `modbus read` shows registers decoded
//! in all four byte orders; `modbus write` writes and reads back; `modbus scan` finds which unit ids
//! answer on a bus. All use the same links, decoders and encoders as the running agent.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use firmware_config::{Parity, SerialLine, Table};

use crate::modbus::client::{ClientLink, Transport};
use crate::modbus::link::{LinkError, ModbusLink, Registers};

/// Parses a link given on the command line: `tcp:HOST:PORT`, `rtu:PORT[:BAUD[:8N1]]` or
/// `rtu-tcp:HOST:PORT[:BAUD[:8N1]]`.
pub fn parse_link(s: &str) -> Result<Transport, String> {
    let usage = || {
        format!(
            "link {s:?}: expected tcp:HOST:PORT, rtu:/dev/ttyUSB0[:9600[:8N1]] or rtu-tcp:HOST:PORT[:9600[:8N1]]"
        )
    };
    let (kind, rest) = s.split_once(':').ok_or_else(usage)?;
    match kind {
        "tcp" => {
            rest.rsplit_once(':')
                .filter(|(_, p)| p.parse::<u16>().is_ok())
                .ok_or_else(usage)?;
            Ok(Transport::Tcp {
                host: rest.to_owned(),
            })
        }
        "rtu" => {
            let mut parts = rest.split(':');
            let port = parts
                .next()
                .filter(|p| !p.is_empty())
                .ok_or_else(usage)?
                .to_owned();
            let line =
                serial_line(parts.next(), parts.next()).map_err(|e| format!("{}: {e}", usage()))?;
            Ok(Transport::RtuSerial { port, line })
        }
        "rtu-tcp" => {
            let mut parts = rest.splitn(4, ':');
            let (host, port) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            if host.is_empty() || port.parse::<u16>().is_err() {
                return Err(usage());
            }
            let line =
                serial_line(parts.next(), parts.next()).map_err(|e| format!("{}: {e}", usage()))?;
            Ok(Transport::RtuOverTcp {
                host: format!("{host}:{port}"),
                line: Some(line),
            })
        }
        _ => Err(usage()),
    }
}

fn serial_line(baud: Option<&str>, frame: Option<&str>) -> Result<SerialLine, String> {
    let baud = baud.map_or(Ok(9600), |b| {
        b.parse::<u32>()
            .map_err(|_| format!("baud {b:?} is not a number"))
    })?;
    let frame = frame.unwrap_or("8N1");
    let b = frame.as_bytes();
    if b.len() != 3 || !matches!(b[0], b'7' | b'8') || !matches!(b[2], b'1' | b'2') {
        return Err(format!("frame {frame:?} is not like 8N1, 8E1, 8O1 or 8N2"));
    }
    let parity = match b[1] {
        b'N' | b'n' => Parity::None,
        b'E' | b'e' => Parity::Even,
        b'O' | b'o' => Parity::Odd,
        _ => return Err(format!("parity in {frame:?} must be N, E or O")),
    };
    Ok(SerialLine {
        baud,
        parity,
        data_bits: b[0] - b'0',
        stop_bits: b[2] - b'0',
    })
}

fn hex(regs: &Registers) -> String {
    match regs {
        Registers::Words(w) => w
            .iter()
            .map(|x| format!("{x:04X}"))
            .collect::<Vec<_>>()
            .join(" "),
        Registers::Bits(b) => b.iter().map(|x| if *x { '1' } else { '0' }).collect(),
    }
}

/// Reads every request of `device` (from the gateway file `config`) `times` times and reports what
/// came back. Returns the report and whether every request was answered.
pub async fn probe(
    config: &Path,
    profiles: Option<&Path>,
    device: &str,
    times: u32,
) -> anyhow::Result<(String, bool)> {
    let set = crate::job::profiles(profiles)?;
    let cfg = firmware_config::load_gateway(config, &set).map_err(crate::job::diagnostics)?;
    let (bus, dev) = cfg
        .devices()
        .find(|(_, d)| d.id.as_str() == device)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "{}: no device {device:?}; devices: {}",
                config.display(),
                names(&cfg)
            )
        })?;
    let mut link = crate::job::link_for(bus);
    let mut out = String::new();
    let mut all_ok = true;
    for round in 0..times.max(1) {
        let _ = writeln!(
            out,
            "{} unit {} ({}) on {}{}",
            dev.id,
            dev.unit,
            dev.profile.name,
            link.describe(),
            if times > 1 {
                format!(", read {}", round + 1)
            } else {
                String::new()
            }
        );
        let mut decoded = Vec::new();
        for req in &dev.requests {
            let started = Instant::now();
            let r = link.read(dev.unit, req.table, req.start, req.count).await;
            let ms = started.elapsed().as_secs_f64() * 1000.0;
            let span = format!(
                "{:<15} {:>5}..{:<5}",
                req.table.as_str(),
                req.start,
                u32::from(req.start) + u32::from(req.count) - 1
            );
            match r {
                Ok(regs) => {
                    let _ = writeln!(out, "  {span} {ms:>6.1} ms  {}", hex(&regs));
                    let raw = regs.raw();
                    decoded.extend(dev.decode(req, raw));
                }
                Err(e) => {
                    all_ok = false;
                    let _ = writeln!(out, "  {span} {ms:>6.1} ms  FAILED: {e}");
                }
            }
            tokio::time::sleep(Duration::from_millis(u64::from(bus.pause_ms))).await;
        }
        let derived = dev.derive(&decoded);
        for d in decoded.iter().chain(&derived) {
            let unit = d.unit.as_ref().map(|u| format!(" {u}")).unwrap_or_default();
            let line = match &d.outcome {
                Ok(v) => format!("    {:<20} {v:?}{unit}", d.metric.as_str()),
                Err(p) => match p.value() {
                    Some(v) => format!(
                        "    {:<20} {v:?}{unit}  BAD {}: {p}",
                        d.metric.as_str(),
                        p.reason().as_str()
                    ),
                    None => format!(
                        "    {:<20} BAD {}: {p}",
                        d.metric.as_str(),
                        p.reason().as_str()
                    ),
                },
            };
            let _ = writeln!(out, "{line}");
        }
        if round + 1 < times {
            tokio::time::sleep(Duration::from_millis(u64::from(dev.poll_ms))).await;
        }
    }
    Ok((out, all_ok))
}

fn names(cfg: &firmware_config::GatewayConfig) -> String {
    cfg.devices()
        .map(|(_, d)| d.id.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// What a unit did when scanned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanResult {
    /// It answered the read.
    Answered(Registers),
    /// It answered with an exception: a device is there, it just has no such register.
    Exception(String),
}

/// Asks each unit in `units` for one register of `table` at `address`; returns those that answered.
/// A unit that stays silent within `timeout` is absent. `progress` is told each unit before it is asked.
pub async fn scan(
    transport: Transport,
    units: std::ops::RangeInclusive<u8>,
    table: Table,
    address: u16,
    timeout: Duration,
    mut progress: impl FnMut(u8, usize),
) -> Vec<(u8, ScanResult)> {
    let mut link = ClientLink::new(transport, timeout, Duration::ZERO);
    let mut found = Vec::new();
    for unit in units {
        progress(unit, found.len());
        match link.read(unit, table, address, 1).await {
            Ok(regs) => found.push((unit, ScanResult::Answered(regs))),
            Err(e @ LinkError::Exception { .. }) => {
                found.push((unit, ScanResult::Exception(e.to_string())))
            }
            Err(_) => {}
        }
    }
    found
}

/// The scan as a table for the terminal.
pub fn scan_report(found: &[(u8, ScanResult)]) -> String {
    let mut out = String::new();
    if found.is_empty() {
        out.push_str("no unit answered\n");
    }
    for (unit, r) in found {
        let what = match r {
            ScanResult::Answered(regs) => format!("answers: {}", hex(regs)),
            ScanResult::Exception(e) => format!("present, refused the read: {e}"),
        };
        let _ = writeln!(out, "unit {unit:>3}  {what}");
    }
    out
}

/// Parses a table, data type or byte order as the profile files write it (`holding`, `f32`, `CDAB`).
pub fn parse_name<T: serde::de::DeserializeOwned>(what: &str, s: &str) -> Result<T, String> {
    serde_json::from_value(serde_json::Value::String(s.to_owned()))
        .map_err(|e| format!("{what} {s:?}: {e}"))
}

/// A field for ad-hoc reads and writes, or the profile's field when one is named.
pub fn adhoc_field(
    table: Table,
    address: u16,
    data_type: firmware_config::DataType,
    count: Option<u16>,
) -> firmware_config::Field {
    firmware_config::Field {
        metric: protocol::MetricId::new("value").unwrap_or_else(|_| unreachable!("valid literal")),
        table,
        address: u32::from(address),
        data_type,
        count,
        bit: None,
        byte_order: firmware_config::ByteOrder::ABCD,
        scale: 1.0,
        offset: 0.0,
        unit: None,
        range: None,
        labels: None,
        deadband: None,
        writable: true,
        description: None,
    }
}

const ORDERS: [firmware_config::ByteOrder; 4] = [
    firmware_config::ByteOrder::ABCD,
    firmware_config::ByteOrder::DCBA,
    firmware_config::ByteOrder::BADC,
    firmware_config::ByteOrder::CDAB,
];

/// `modbus read`: reads `field`'s registers from `unit` and shows them raw and decoded in all four
/// byte orders; with a profile's field, lines whose value is inside its plausible range are marked.
pub async fn read(
    transport: Transport,
    timeout: Duration,
    unit: u8,
    field: &firmware_config::Field,
    address: u16,
) -> Result<String, LinkError> {
    let mut link = ClientLink::new(transport, timeout, Duration::ZERO);
    let count = field.size().max(1);
    let started = Instant::now();
    let regs = link.read(unit, field.table, address, count).await?;
    let mut out = format!(
        "{} {}..{} of unit {unit} on {} ({:.1} ms): {}\n",
        field.table.as_str(),
        address,
        u32::from(address) + u32::from(count) - 1,
        link.describe(),
        started.elapsed().as_secs_f64() * 1000.0,
        hex(&regs)
    );
    let raw = regs.raw();
    let orders: &[firmware_config::ByteOrder] = if field.table.is_bits() || count == 1 {
        &ORDERS[..1]
    } else {
        &ORDERS
    };
    for order in orders {
        let mut f = field.clone();
        f.byte_order = *order;
        let unit = f.unit.as_ref().map(|u| format!(" {u}")).unwrap_or_default();
        let line = match firmware_config::decode(&f, raw) {
            Ok(v) => {
                let mark = if f.range.is_some() {
                    "  ← in range"
                } else {
                    ""
                };
                format!("  {} {order:?}  {v:?}{unit}{mark}", f.data_type.as_str())
            }
            Err(p) => match p.value() {
                Some(v) => format!(
                    "  {} {order:?}  {v:?}{unit}  (outside {:?})",
                    f.data_type.as_str(),
                    f.range.unwrap_or_default()
                ),
                None => format!("  {} {order:?}  not decodable: {p}", f.data_type.as_str()),
            },
        };
        let _ = writeln!(out, "{line}");
    }
    Ok(out)
}

/// `modbus write`: encodes `value` for `field`, writes it to `unit`, reads it back.
pub async fn write(
    transport: Transport,
    timeout: Duration,
    unit: u8,
    field: &firmware_config::Field,
    address: u16,
    value: &protocol::Value,
) -> Result<String, String> {
    let encoded = firmware_config::encode(field, value).map_err(|e| e.to_string())?;
    let mut link = ClientLink::new(transport, timeout, Duration::ZERO);
    let (sent, back) =
        crate::command::write_and_read_back(&mut link, unit, field, address, encoded)
            .await
            .map_err(|e| e.to_string())?;
    let sent = hex(&sent);
    let raw = back.raw();
    let decoded = firmware_config::decode(field, raw)
        .map_or_else(|p| format!("not decodable: {p}"), |v| format!("{v:?}"));
    Ok(format!(
        "wrote {sent} to {} {address} of unit {unit} on {}; read back {} = {decoded}\n",
        field.table.as_str(),
        link.describe(),
        hex(&back)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_links() {
        assert_eq!(
            parse_link("tcp:10.0.0.5:502"),
            Ok(Transport::Tcp {
                host: "10.0.0.5:502".into()
            })
        );
        let Ok(Transport::RtuSerial { port, line }) = parse_link("rtu:/dev/ttyUSB0:19200:8E1")
        else {
            panic!()
        };
        assert_eq!(
            (port.as_str(), line.baud, line.parity, line.stop_bits),
            ("/dev/ttyUSB0", 19200, Parity::Even, 1)
        );
        let Ok(Transport::RtuSerial { line, .. }) = parse_link("rtu:/dev/ttyAMA0") else {
            panic!()
        };
        assert_eq!(line.to_string(), "9600 8N1");
        assert!(matches!(
            parse_link("rtu-tcp:192.168.1.20:4196:9600:8N1"),
            Ok(Transport::RtuOverTcp { .. })
        ));
        for bad in [
            "tcp:host",
            "udp:x:1",
            "rtu:",
            "rtu:/dev/x:fast",
            "rtu:/dev/x:9600:9N1",
            "rtu-tcp:h:p",
        ] {
            assert!(parse_link(bad).is_err(), "{bad}");
        }
    }
}
