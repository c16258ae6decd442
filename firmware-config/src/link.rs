//! How a gateway reaches the world: the MQTT uplink with its broker address, and the link of each
//! Modbus bus (serial port or TCP endpoint), with defaults applied.

use std::fmt;
use std::path::PathBuf;

use crate::gateway::{BusKind, BusSpec, TlsSpec};
use crate::timing::SerialLine;

/// The MQTT connection with defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Uplink {
    pub broker: Broker,
    /// Defaults to the gateway id.
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub password_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub topic_root: String,
    pub keep_alive_s: u16,
    pub tls: Option<TlsSpec>,
}

/// A parsed broker address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broker {
    /// `mqtts://`.
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl Broker {
    /// Parses `mqtt://host[:port]` or `mqtts://host[:port]`.
    pub fn parse(url: &str) -> Result<Self, String> {
        let (tls, rest) = match url.split_once("://") {
            Some(("mqtt", rest)) => (false, rest),
            Some(("mqtts", rest)) => (true, rest),
            _ => {
                return Err(format!(
                    "broker {url:?} must start with mqtt:// or mqtts://"
                ));
            }
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let default_port = if tls { 8883 } else { 1883 };
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) => (host, port.parse::<u16>().ok().filter(|p| *p != 0)),
            None => (rest, Some(default_port)),
        };
        let Some(port) = port else {
            return Err(format!("broker {url:?} has no valid port (1..=65535)"));
        };
        if host.is_empty() || host.contains(['/', '@', ' ', '?']) {
            return Err(format!(
                "broker {url:?} must be mqtt://host:port (no path, user or query)"
            ));
        }
        Ok(Self {
            tls,
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for Broker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}://{}:{}",
            if self.tls { "mqtts" } else { "mqtt" },
            self.host,
            self.port
        )
    }
}

/// How a bus reaches its devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Link {
    /// A serial port (RS-485).
    Rtu { port: String, line: SerialLine },
    /// Modbus TCP to `host:port`.
    Tcp { addr: String },
    /// RTU frames over TCP to `host:port`; the serial side's settings if given.
    RtuOverTcp {
        addr: String,
        line: Option<SerialLine>,
    },
}

impl Link {
    /// The link of `bus`, or why it has none.
    pub fn of(bus: &BusSpec) -> Result<Link, String> {
        let addr = || {
            bus.host
                .clone()
                .ok_or_else(|| format!("a {} bus needs host = \"host:port\"", bus.kind.as_str()))
        };
        Ok(match bus.kind {
            BusKind::Rtu => Link::Rtu {
                port: bus
                    .port
                    .clone()
                    .ok_or("an rtu bus needs port = \"/dev/ttyUSB0\" (its serial device)")?,
                line: bus
                    .serial_line()
                    .ok_or("an rtu bus needs serial settings")?,
            },
            BusKind::Tcp => Link::Tcp { addr: addr()? },
            BusKind::RtuOverTcp => Link::RtuOverTcp {
                addr: addr()?,
                line: bus.serial_line(),
            },
        })
    }
}

/// `rtu /dev/ttyUSB0 9600 8N1`, `tcp 127.0.0.1:502`.
impl fmt::Display for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Link::Rtu { port, line } => write!(f, "rtu {port} {line}"),
            Link::Tcp { addr } => write!(f, "tcp {addr}"),
            Link::RtuOverTcp {
                addr,
                line: Some(line),
            } => write!(f, "rtu_over_tcp {addr} {line}"),
            Link::RtuOverTcp { addr, line: None } => write!(f, "rtu_over_tcp {addr}"),
        }
    }
}
