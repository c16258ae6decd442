//! Commands from the hub performed on a device: write a writable field of its profile (switch or dim a
//! lamp), read it back, and say precisely how it went. Runs inside the poller that owns the device's
//! bus, between polls, so a write never interleaves with another request on the bus.

use firmware_config::{Device, Encoded, Field};
use protocol::{Action, Command, CommandOutcome, GatewayId, Reply, Timestamp, Value};

use crate::modbus::link::{LinkError, ModbusLink, Registers};

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
    let (_, back) = write_and_read_back(link, device.unit, field, addr, encoded)
        .await
        .map_err(|e| failed(e.to_string()))?;
    let back = match firmware_config::decode(field, back.raw()) {
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

/// Which step of a write failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    #[error("reading the register before changing one bit failed: {0}")]
    Before(LinkError),
    #[error("write failed: {0}")]
    Write(LinkError),
    #[error("written, but reading back failed: {0}")]
    ReadBack(LinkError),
}

/// Writes `encoded` to `field` at wire address `addr` of `unit`, then reads the field back. One bit
/// of a register is written by read-modify-write, keeping the register's other bits. Returns what
/// was sent and what came back.
pub async fn write_and_read_back<L: ModbusLink>(
    link: &mut L,
    unit: u8,
    field: &Field,
    addr: u16,
    encoded: Encoded,
) -> Result<(Registers, Registers), WriteError> {
    let data = match encoded {
        Encoded::Bit(b) => Registers::Bits(vec![b]),
        Encoded::Words(w) => Registers::Words(w),
        Encoded::RegisterBit { .. } => match link
            .read(unit, field.table, addr, 1)
            .await
            .map_err(WriteError::Before)?
        {
            Registers::Words(w) => Registers::Words(vec![
                encoded.apply_to_register(w.first().copied().unwrap_or(0)),
            ]),
            Registers::Bits(_) => {
                return Err(WriteError::Before(LinkError::Corrupt(
                    "a register read returned bits".into(),
                )));
            }
        },
    };
    link.write(unit, field.table, addr, data.clone())
        .await
        .map_err(WriteError::Write)?;
    let back = link
        .read(unit, field.table, addr, field.size().max(1))
        .await
        .map_err(WriteError::ReadBack)?;
    Ok((data, back))
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
