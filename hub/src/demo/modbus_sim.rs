//! Simulated field devices served over real Modbus TCP: each unit answers with the registers its own
//! device profile describes, holding the values the town model gives for the current simulated time.
//! The agents behind them therefore run their production code path: real sockets, real framing,
//! real register decoding.

use std::collections::{BTreeMap, HashMap};
use std::future::{Ready, ready};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use firmware_config::{Device, Encoded, Field, Table};
use protocol::Value;
use tokio::net::TcpListener;
use tokio_modbus::server::Service;
use tokio_modbus::server::tcp::{Server, accept_tcp_connection};
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};
use tokio_util::sync::CancellationToken;

use super::town::{SimClock, SimDevice};

/// One simulated device on a bus.
#[derive(Debug)]
pub struct SimUnit {
    pub device: Device,
    pub model: SimDevice,
    /// Values written by commands, by (table, wire address); they override the model.
    written: Mutex<HashMap<(Table, u16), u16>>,
}

impl SimUnit {
    pub fn new(device: Device, model: SimDevice) -> Self {
        Self {
            device,
            model,
            written: Mutex::new(HashMap::new()),
        }
    }

    /// The device's registers (or bits, as 0/1) of `table` at simulated time `sim_s`.
    fn image(&self, table: Table, sim_s: f64) -> BTreeMap<u16, u16> {
        let values = self.model.observe(sim_s);
        let base = self.device.knobs.address_base;
        let mut image = BTreeMap::new();
        for field in self
            .device
            .profile
            .fields
            .iter()
            .filter(|f| f.table == table)
        {
            let Some(addr) = field.wire_address(base) else {
                continue;
            };
            let encoded = values
                .get(field.metric.as_str())
                .and_then(|v| firmware_config::encode(field, v).ok())
                .or_else(|| firmware_config::encode(field, &fallback(field)).ok());
            match encoded {
                Some(Encoded::Bit(b)) => {
                    image.insert(addr, u16::from(b));
                }
                Some(Encoded::Words(words)) => {
                    for (i, w) in words.into_iter().enumerate() {
                        image.insert(addr.saturating_add(i as u16), w);
                    }
                }
                Some(bit @ Encoded::RegisterBit { .. }) => {
                    let cur = image.get(&addr).copied().unwrap_or(0);
                    image.insert(addr, bit.apply_to_register(cur));
                }
                None => {
                    image.entry(addr).or_insert(0);
                }
            }
        }
        let written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        for ((t, a), v) in written.iter() {
            if *t == table {
                image.insert(*a, *v);
            }
        }
        image
    }
}

/// A plausible value for a metric the town model does not simulate: the first enum label, the middle
/// of the plausible range, or zero.
fn fallback(field: &Field) -> Value {
    if let Some(labels) = &field.labels
        && let Some(first) = labels.values().next()
    {
        return Value::Text(first.clone());
    }
    if matches!(field.table, Table::Coil | Table::DiscreteInput)
        || field.data_type == firmware_config::DataType::Bit
    {
        return Value::Bool(false);
    }
    match field.range() {
        Some((lo, hi)) => Value::Number((lo + hi) / 2.0),
        None => Value::Number(0.0),
    }
}

/// The devices of one simulated bus (one TCP port), by unit id.
#[derive(Debug)]
pub struct SimBus {
    pub units: BTreeMap<u8, SimUnit>,
    pub clock: SimClock,
}

impl SimBus {
    fn read(
        &self,
        unit: u8,
        table: Table,
        start: u16,
        count: u16,
    ) -> Result<Option<Vec<u16>>, ExceptionCode> {
        // An absent unit stays silent, as a dead sensor on an RS-485 bus behind a serial server does.
        let now = self.clock.now_s();
        let Some(u) = self.units.get(&unit).filter(|u| u.model.alive(now)) else {
            return Ok(None);
        };
        let image = u.image(table, now);
        let (Some(first), Some(last)) = (
            image.keys().next().copied(),
            image.keys().next_back().copied(),
        ) else {
            return Err(ExceptionCode::IllegalDataAddress);
        };
        let end = u32::from(start) + u32::from(count);
        if count == 0 || start < first || end > u32::from(last) + 1 {
            return Err(ExceptionCode::IllegalDataAddress);
        }
        Ok(Some(
            (start..end as u16)
                .map(|a| image.get(&a).copied().unwrap_or(0))
                .collect(),
        ))
    }

    fn write(
        &self,
        unit: u8,
        table: Table,
        start: u16,
        values: &[u16],
    ) -> Result<Option<()>, ExceptionCode> {
        let Some(u) = self
            .units
            .get(&unit)
            .filter(|u| u.model.alive(self.clock.now_s()))
        else {
            return Ok(None);
        };
        let writable = u.device.profile.fields.iter().any(|f| {
            f.table == table
                && f.writable
                && f.wire_address(u.device.knobs.address_base)
                    .is_some_and(|a| {
                        a <= start && u32::from(start) < u32::from(a) + u32::from(f.size())
                    })
        });
        if !writable {
            return Err(ExceptionCode::IllegalDataAddress);
        }
        let mut written = u.written.lock().unwrap_or_else(|p| p.into_inner());
        for (i, v) in values.iter().enumerate() {
            written.insert((table, start.saturating_add(i as u16)), *v);
        }
        Ok(Some(()))
    }
}

#[derive(Debug, Clone)]
struct BusService(Arc<SimBus>);

impl Service for BusService {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = Ready<Result<Option<Response>, ExceptionCode>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        let bus = &self.0;
        let unit = req.slave;
        let bits = |v: Vec<u16>| v.into_iter().map(|x| x != 0).collect::<Vec<bool>>();
        let result = match req.request {
            Request::ReadCoils(a, n) => bus
                .read(unit, Table::Coil, a, n)
                .map(|r| r.map(|v| Response::ReadCoils(bits(v)))),
            Request::ReadDiscreteInputs(a, n) => bus
                .read(unit, Table::DiscreteInput, a, n)
                .map(|r| r.map(|v| Response::ReadDiscreteInputs(bits(v)))),
            Request::ReadInputRegisters(a, n) => bus
                .read(unit, Table::Input, a, n)
                .map(|r| r.map(Response::ReadInputRegisters)),
            Request::ReadHoldingRegisters(a, n) => bus
                .read(unit, Table::Holding, a, n)
                .map(|r| r.map(Response::ReadHoldingRegisters)),
            Request::WriteSingleCoil(a, b) => bus
                .write(unit, Table::Coil, a, &[u16::from(b)])
                .map(|r| r.map(|()| Response::WriteSingleCoil(a, b))),
            Request::WriteSingleRegister(a, w) => bus
                .write(unit, Table::Holding, a, &[w])
                .map(|r| r.map(|()| Response::WriteSingleRegister(a, w))),
            Request::WriteMultipleRegisters(a, ws) => {
                let n = ws.len() as u16;
                bus.write(unit, Table::Holding, a, &ws)
                    .map(|r| r.map(|()| Response::WriteMultipleRegisters(a, n)))
            }
            Request::WriteMultipleCoils(a, bs) => {
                let n = bs.len() as u16;
                let words: Vec<u16> = bs.iter().map(|b| u16::from(*b)).collect();
                bus.write(unit, Table::Coil, a, &words)
                    .map(|r| r.map(|()| Response::WriteMultipleCoils(a, n)))
            }
            _ => Err(ExceptionCode::IllegalFunction),
        };
        ready(result)
    }
}

/// Serves `bus` on `addr` until `shutdown`.
pub async fn serve(
    addr: SocketAddr,
    bus: Arc<SimBus>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot serve simulated devices on {addr}: {e}"))?;
    let server = Server::new(listener);
    let service = BusService(bus);
    tokio::spawn(async move {
        let on_connected = |stream, socket_addr| {
            let service = service.clone();
            async move { accept_tcp_connection(stream, socket_addr, move |_| Ok(Some(service.clone()))) }
        };
        let on_error = |e| tracing::debug!(error = %e, "simulated device connection ended");
        if let Err(e) = server
            .serve_until(&on_connected, on_error, shutdown.cancelled_owned())
            .await
        {
            tracing::error!(error = %e, %addr, "simulated bus stopped");
        }
    });
    Ok(())
}
