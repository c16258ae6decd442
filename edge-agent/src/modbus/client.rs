//! The real Modbus links (tokio-modbus): Modbus TCP, RTU on a serial port (RS-485), and RTU frames
//! over TCP (the serial device servers and DTUs common in roadside cabinets).
//!
//! One [`ClientLink`] per bus, owned by that bus's poller, so requests never overlap. Before each RTU
//! request the link keeps the bus silent for the inter-frame gap (3.5 character times, 1.75 ms above
//! 19200 baud). After a timeout, a transport error or a reply that does not fit the request, the
//! connection is dropped and the next request opens a fresh one (with the serial input buffer cleared),
//! so a late reply can never be taken for the answer to a later request. Reconnecting backs off
//! exponentially with jitter while the other end stays unreachable.

use std::time::Duration;

use firmware_config::SerialLine;
use tokio::time::Instant;
use tokio_modbus::client::{Context, Reader, Writer};
use tokio_modbus::prelude::{Slave, SlaveContext};
use tokio_serial::SerialPort;

use super::Table;
use super::link::{LinkError, ModbusLink, Registers};

/// How a bus reaches its devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    Tcp {
        host: String,
    },
    RtuSerial {
        port: String,
        line: SerialLine,
    },
    RtuOverTcp {
        host: String,
        line: Option<SerialLine>,
    },
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transport::Tcp { host } => write!(f, "tcp {host}"),
            Transport::RtuSerial { port, line } => write!(f, "rtu {port} {line}"),
            Transport::RtuOverTcp { host, .. } => write!(f, "rtu_over_tcp {host}"),
        }
    }
}

pub struct ClientLink {
    transport: Transport,
    timeout: Duration,
    /// Some devices need a moment after a connection opens before they answer.
    pause_after_connect: Duration,
    /// Silence kept before each RTU request (inter-frame gap); zero for Modbus TCP.
    frame_gap: Duration,
    ctx: Option<Context>,
    last_io: Option<Instant>,
    connect_failures: u32,
    retry_at: Option<Instant>,
}

impl std::fmt::Debug for ClientLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientLink")
            .field("transport", &self.transport.to_string())
            .field("connected", &self.ctx.is_some())
            .finish()
    }
}

impl ClientLink {
    pub fn new(transport: Transport, timeout: Duration, pause_after_connect: Duration) -> Self {
        let line = match &transport {
            Transport::RtuSerial { line, .. } => Some(*line),
            Transport::RtuOverTcp { line, .. } => *line,
            Transport::Tcp { .. } => None,
        };
        let frame_gap = match (&transport, line) {
            (Transport::Tcp { .. }, _) => Duration::ZERO,
            (_, Some(l)) => Duration::from_secs_f64(l.frame_gap_ms() / 1000.0),
            // RTU over TCP without serial settings: assume 9600 8N1, the most common in the field.
            (_, None) => Duration::from_micros(4_010),
        };
        Self {
            transport,
            timeout,
            pause_after_connect,
            frame_gap,
            ctx: None,
            last_io: None,
            connect_failures: 0,
            retry_at: None,
        }
    }

    /// Opens a connection. A free function of the transport (not `&self`): the future must not hold a
    /// reference to the non-`Sync` client context.
    async fn connect(
        transport: &Transport,
        timeout: Duration,
        unit: u8,
    ) -> Result<Context, LinkError> {
        let slave = Slave(unit);
        let down = |what: &str, e: &dyn std::fmt::Display| {
            LinkError::Down(format!("{what} {transport}: {e}"))
        };
        match transport {
            Transport::Tcp { host } => {
                let addr = resolve(host).await?;
                tokio_modbus::client::tcp::connect_slave(addr, slave)
                    .await
                    .map_err(|e| down("connect", &e))
            }
            Transport::RtuOverTcp { host, .. } => {
                let addr = resolve(host).await?;
                let stream = tokio::net::TcpStream::connect(addr)
                    .await
                    .map_err(|e| down("connect", &e))?;
                let _ = stream.set_nodelay(true);
                Ok(tokio_modbus::client::rtu::attach_slave(stream, slave))
            }
            Transport::RtuSerial { port, line } => {
                let builder = tokio_serial::new(port, line.baud)
                    .data_bits(match line.data_bits {
                        7 => tokio_serial::DataBits::Seven,
                        _ => tokio_serial::DataBits::Eight,
                    })
                    .parity(match line.parity {
                        firmware_config::Parity::None => tokio_serial::Parity::None,
                        firmware_config::Parity::Even => tokio_serial::Parity::Even,
                        firmware_config::Parity::Odd => tokio_serial::Parity::Odd,
                    })
                    .stop_bits(if line.stop_bits == 2 {
                        tokio_serial::StopBits::Two
                    } else {
                        tokio_serial::StopBits::One
                    })
                    .timeout(timeout);
                let stream =
                    tokio_serial::SerialStream::open(&builder).map_err(|e| down("open", &e))?;
                // Whatever arrived while no request was outstanding (a late reply) is not an answer.
                let _ = stream.clear(tokio_serial::ClearBuffer::All);
                Ok(tokio_modbus::client::rtu::attach_slave(stream, slave))
            }
        }
    }

    async fn context(&mut self, unit: u8) -> Result<&mut Context, LinkError> {
        if self.ctx.is_none() {
            if let Some(at) = self.retry_at
                && Instant::now() < at
            {
                return Err(LinkError::Down(format!(
                    "{}: reconnect backing off",
                    self.transport
                )));
            }
            let attempt = tokio::time::timeout(
                self.timeout,
                Self::connect(&self.transport, self.timeout, unit),
            )
            .await;
            let ctx = match attempt {
                Ok(Ok(ctx)) => ctx,
                Ok(Err(e)) => return Err(self.connect_failed(e)),
                Err(_) => {
                    return Err(self.connect_failed(LinkError::Down(format!(
                        "connect to {} timed out",
                        self.transport
                    ))));
                }
            };
            self.connect_failures = 0;
            self.retry_at = None;
            self.ctx = Some(ctx);
            if !self.pause_after_connect.is_zero() {
                tokio::time::sleep(self.pause_after_connect).await;
            }
        }
        let ctx = self
            .ctx
            .as_mut()
            .ok_or_else(|| LinkError::Down("no connection".into()))?;
        ctx.set_slave(Slave(unit));
        Ok(ctx)
    }

    fn connect_failed(&mut self, e: LinkError) -> LinkError {
        self.connect_failures += 1;
        self.retry_at = Some(
            Instant::now() + protocol::reconnect::delay(self.connect_failures, fastrand::f64()),
        );
        e
    }

    /// Runs one request with the timeout; resets the connection on anything but a device exception.
    async fn run<T>(
        &mut self,
        unit: u8,
        f: impl AsyncFnOnce(&mut Context) -> tokio_modbus::Result<T>,
    ) -> Result<T, LinkError> {
        let timeout = self.timeout;
        if let Some(last) = self.last_io {
            tokio::time::sleep_until(last + self.frame_gap).await;
        }
        let ctx = self.context(unit).await?;
        let outcome = tokio::time::timeout(timeout, f(ctx)).await;
        self.last_io = Some(Instant::now());
        let err = match outcome {
            Err(_) => LinkError::Timeout {
                ms: timeout.as_millis() as u64,
            },
            Ok(Err(tokio_modbus::Error::Transport(e))) => LinkError::Down(e.to_string()),
            Ok(Err(tokio_modbus::Error::Protocol(e))) => LinkError::Corrupt(e.to_string()),
            Ok(Ok(Err(code))) => {
                return Err(LinkError::Exception {
                    code: u8::from(code),
                    name: format!("{code:?}"),
                });
            }
            Ok(Ok(Ok(v))) => return Ok(v),
        };
        self.ctx = None;
        Err(err)
    }
}

async fn resolve(host: &str) -> Result<std::net::SocketAddr, LinkError> {
    tokio::net::lookup_host(host)
        .await
        .map_err(|e| LinkError::Down(format!("cannot resolve {host}: {e}")))?
        .next()
        .ok_or_else(|| LinkError::Down(format!("{host} resolves to no address")))
}

impl ModbusLink for ClientLink {
    async fn read(
        &mut self,
        unit: u8,
        table: Table,
        start: u16,
        count: u16,
    ) -> Result<Registers, LinkError> {
        let data = match table {
            Table::Coil => Registers::Bits(
                self.run(unit, async |c| c.read_coils(start, count).await)
                    .await?,
            ),
            Table::DiscreteInput => Registers::Bits(
                self.run(unit, async |c| c.read_discrete_inputs(start, count).await)
                    .await?,
            ),
            Table::Input => Registers::Words(
                self.run(unit, async |c| c.read_input_registers(start, count).await)
                    .await?,
            ),
            Table::Holding => Registers::Words(
                self.run(unit, async |c| c.read_holding_registers(start, count).await)
                    .await?,
            ),
        };
        let got = match &data {
            Registers::Words(w) => w.len(),
            Registers::Bits(b) => b.len(),
        };
        if got < usize::from(count) {
            self.ctx = None;
            return Err(LinkError::Corrupt(format!(
                "asked for {count} values, got {got}"
            )));
        }
        Ok(data)
    }

    async fn write(
        &mut self,
        unit: u8,
        table: Table,
        start: u16,
        data: Registers,
    ) -> Result<(), LinkError> {
        match (table, data) {
            (Table::Holding, Registers::Words(w)) if w.len() == 1 => {
                self.run(unit, async |c| c.write_single_register(start, w[0]).await)
                    .await
            }
            (Table::Holding, Registers::Words(w)) => {
                self.run(unit, async |c| c.write_multiple_registers(start, &w).await)
                    .await
            }
            (Table::Coil, Registers::Bits(b)) if b.len() == 1 => {
                self.run(unit, async |c| c.write_single_coil(start, b[0]).await)
                    .await
            }
            (Table::Coil, Registers::Bits(b)) => {
                self.run(unit, async |c| c.write_multiple_coils(start, &b).await)
                    .await
            }
            (table, _) => Err(LinkError::Corrupt(format!(
                "cannot write {table:?} with that data"
            ))),
        }
    }

    fn describe(&self) -> String {
        self.transport.to_string()
    }
}
