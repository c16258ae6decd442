//! Modbus TCP links (tokio-modbus), reconnecting on demand after any failure.

use std::net::SocketAddr;
use std::time::Duration;

use tokio_modbus::client::{Context, Reader, Writer};
use tokio_modbus::prelude::{Slave, SlaveContext};

use super::Table;
use super::link::{LinkError, ModbusLink, Registers};

/// A Modbus TCP connection to `host`, opened lazily and dropped after a timeout or transport error:
/// the next request reconnects, so a late reply can never be read as the answer to a later request.
pub struct TcpLink {
    host: String,
    timeout: Duration,
    ctx: Option<Context>,
}

impl std::fmt::Debug for TcpLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpLink")
            .field("host", &self.host)
            .field("connected", &self.ctx.is_some())
            .finish()
    }
}

impl TcpLink {
    pub fn new(host: impl Into<String>, timeout: Duration) -> Self {
        Self {
            host: host.into(),
            timeout,
            ctx: None,
        }
    }

    async fn context(&mut self, unit: u8) -> Result<&mut Context, LinkError> {
        if self.ctx.is_none() {
            let addr = resolve(&self.host).await?;
            let ctx = tokio::time::timeout(
                self.timeout,
                tokio_modbus::client::tcp::connect_slave(addr, Slave(unit)),
            )
            .await
            .map_err(|_| LinkError::Down(format!("connect to {} timed out", self.host)))?
            .map_err(|e| LinkError::Down(format!("connect to {}: {e}", self.host)))?;
            self.ctx = Some(ctx);
        }
        let ctx = self
            .ctx
            .as_mut()
            .ok_or_else(|| LinkError::Down("no connection".into()))?;
        ctx.set_slave(Slave(unit));
        Ok(ctx)
    }

    /// Runs one request with the timeout; resets the connection on anything but a device exception.
    async fn run<T>(
        &mut self,
        unit: u8,
        f: impl AsyncFnOnce(&mut Context) -> tokio_modbus::Result<T>,
    ) -> Result<T, LinkError> {
        let timeout = self.timeout;
        let ctx = self.context(unit).await?;
        let outcome = match tokio::time::timeout(timeout, f(ctx)).await {
            Err(_) => Err(LinkError::Timeout {
                ms: timeout.as_millis() as u64,
            }),
            Ok(Err(tokio_modbus::Error::Transport(e))) => Err(LinkError::Down(e.to_string())),
            Ok(Err(tokio_modbus::Error::Protocol(e))) => Err(LinkError::Corrupt(e.to_string())),
            Ok(Ok(Err(code))) => {
                return Err(LinkError::Exception {
                    code: u8::from(code),
                    name: format!("{code:?}"),
                });
            }
            Ok(Ok(Ok(v))) => return Ok(v),
        };
        self.ctx = None;
        outcome
    }
}

async fn resolve(host: &str) -> Result<SocketAddr, LinkError> {
    tokio::net::lookup_host(host)
        .await
        .map_err(|e| LinkError::Down(format!("cannot resolve {host}: {e}")))?
        .next()
        .ok_or_else(|| LinkError::Down(format!("{host} resolves to no address")))
}

impl ModbusLink for TcpLink {
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
        format!("tcp {}", self.host)
    }
}
