//! Commands from the hub performed on a device: write a writable field of its profile (switch or dim a
//! lamp), read it back, and say precisely how it went. Runs inside the poller that owns the device's
//! bus, between polls, so a write never interleaves with another request on the bus.

use firmware_config::{Device, Encoded, Raw, Table};
use protocol::{Action, Command, CommandOutcome, GatewayId, Reply, Timestamp, Value};

use crate::modbus::link::{ModbusLink, Registers};

/// Performs `cmd` on `device` over `link` and builds the reply.
pub async fn perform<L: ModbusLink>(
    link: &mut L,
    device: &Device,
    gateway: &GatewayId,
    cmd: &Command,
) -> Reply {
    let (outcome, detail, read_back) = match outcome(link, device, cmd).await {
        Ok(v) => (CommandOutcome::Ok, None, Some(v)),
        Err((outcome, detail, read_back)) => (outcome, Some(detail), read_back),
    };
    match outcome {
        CommandOutcome::Ok => {
            tracing::info!(device = %device.id, command = %cmd.id, "command performed")
        }
        _ => {
            tracing::warn!(device = %device.id, command = %cmd.id, ?outcome, detail = ?detail, "command not performed")
        }
    }
    reply(gateway, cmd, outcome, detail, read_back)
}

/// The reply to `cmd`.
pub fn reply(
    gateway: &GatewayId,
    cmd: &Command,
    outcome: CommandOutcome,
    detail: Option<String>,
    read_back: Option<Value>,
) -> Reply {
    Reply {
        v: protocol::PROTOCOL_VERSION,
        id: cmd.id,
        gateway: gateway.clone(),
        device: cmd.device.clone(),
        at: Timestamp::now(),
        outcome,
        detail: detail.map(|d| d.chars().take(1000).collect()),
        read_back,
    }
}

type Failure = (CommandOutcome, String, Option<Value>);

async fn outcome<L: ModbusLink>(
    link: &mut L,
    device: &Device,
    cmd: &Command,
) -> Result<Value, Failure> {
    let rejected = |detail: String| (CommandOutcome::Rejected, detail, None);
    let failed = |detail: String| (CommandOutcome::Failed, detail, None);
    if Timestamp::now() > cmd.expires_at {
        return Err((
            CommandOutcome::Expired,
            format!("arrived after it expired at {}", cmd.expires_at),
            None,
        ));
    }
    let (metric, value) = match &cmd.action {
        Action::Write { metric, value } => (metric, value),
        Action::Reset => {
            return Err(rejected(format!(
                "profile {} defines no reset sequence",
                device.profile.name
            )));
        }
    };
    let field = device.field(metric.as_str()).ok_or_else(|| {
        let writable: Vec<&str> = device
            .profile
            .fields
            .iter()
            .filter(|f| f.writable)
            .map(|f| f.metric.as_str())
            .collect();
        rejected(format!(
            "{} has no metric {metric}; writable: {}",
            device.profile.name,
            writable.join(", ")
        ))
    })?;
    if !field.writable {
        return Err(rejected(format!(
            "{metric} is read-only in profile {}",
            device.profile.name
        )));
    }
    if let (Some(n), Some((lo, hi))) = (
        value.as_f64().filter(|_| !matches!(value, Value::Bool(_))),
        field.range(),
    ) && !(lo..=hi).contains(&n)
    {
        return Err(rejected(format!(
            "{n} is outside {metric}'s range {lo}..{hi}"
        )));
    }
    let encoded = firmware_config::encode(field, value).map_err(|e| rejected(e.to_string()))?;
    let addr = field
        .wire_address(device.knobs.address_base)
        .ok_or_else(|| rejected(format!("{metric} has no valid wire address")))?;
    let unit = device.unit;
    let (table, len) = (field.table, field.size());
    match encoded {
        Encoded::Bit(b) => {
            link.write(unit, Table::Coil, addr, Registers::Bits(vec![b]))
                .await
        }
        Encoded::Words(w) => {
            link.write(unit, Table::Holding, addr, Registers::Words(w))
                .await
        }
        Encoded::RegisterBit { .. } => {
            // One bit of a register: read, change the bit, write the register back.
            let current = match link
                .read(unit, table, addr, 1)
                .await
                .map_err(|e| failed(format!("reading before write: {e}")))?
            {
                Registers::Words(w) => w.first().copied().unwrap_or(0),
                Registers::Bits(_) => return Err(failed("register read returned bits".into())),
            };
            link.write(
                unit,
                Table::Holding,
                addr,
                Registers::Words(vec![encoded.apply_to_register(current)]),
            )
            .await
        }
    }
    .map_err(|e| failed(format!("write failed: {e}")))?;
    let regs = link
        .read(unit, table, addr, len)
        .await
        .map_err(|e| failed(format!("written, but reading back failed: {e}")))?;
    let raw = match &regs {
        Registers::Words(w) => Raw::Words(w),
        Registers::Bits(b) => Raw::Bits(b),
    };
    let back = match firmware_config::decode(field, raw) {
        Ok(v) => v,
        Err(p) => p
            .value()
            .ok_or_else(|| failed(format!("written, but the read-back does not decode: {p}")))?,
    };
    if same(field.scale, value, &back) {
        Ok(back)
    } else {
        Err((
            CommandOutcome::Failed,
            format!("wrote {value:?} but read back {back:?}"),
            Some(back),
        ))
    }
}

/// Whether the read-back equals what was asked, to within the register's resolution.
fn same(scale: f64, asked: &Value, back: &Value) -> bool {
    match (asked, back) {
        (Value::Number(a), Value::Number(b)) => {
            (a - b).abs() <= scale.abs() / 2.0 + f64::EPSILON * a.abs().max(1.0)
        }
        (Value::Bool(a), Value::Number(b)) | (Value::Number(b), Value::Bool(a)) => {
            (*b != 0.0) == *a
        }
        (a, b) => a == b,
    }
}
