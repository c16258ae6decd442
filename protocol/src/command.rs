//! Commands from the hub to a gateway (`{root}/v1/gw/{gateway}/cmd`) and the gateway's replies
//! (`{root}/v1/gw/{gateway}/reply`): switch or dim a streetlight, reset a device.

use serde::{Deserialize, Serialize};

use crate::error::{Violation, ViolationKind};
use crate::id::{CommandId, DeviceId, GatewayId, MetricId};
use crate::status::check_version;
use crate::timestamp::Timestamp;
use crate::value::Value;

/// What the gateway should do to the device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum Action {
    /// Write a writable metric of the device's profile (e.g. `powerState` true, `dimLevel` 50), then
    /// read it back.
    Write { metric: MetricId, value: Value },
    /// Perform the profile's reset sequence.
    Reset,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Command {
    pub v: u32,
    pub id: CommandId,
    pub device: DeviceId,
    pub issued_at: Timestamp,
    /// A command not performed by then is answered `expired` and not performed.
    pub expires_at: Timestamp,
    pub action: Action,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum CommandOutcome {
    /// Performed and, for writes, read back equal.
    Ok,
    /// Not attempted: unknown device or metric, not writable, value out of range.
    Rejected,
    /// Attempted and failed (timeout, device exception, read-back differs).
    Failed,
    /// Arrived after `expiresAt`.
    Expired,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Reply {
    pub v: u32,
    pub id: CommandId,
    pub gateway: GatewayId,
    pub device: DeviceId,
    pub at: Timestamp,
    pub outcome: CommandOutcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_back: Option<Value>,
}

impl Command {
    pub fn validate(&self) -> Result<(), Violation> {
        check_version(self.v)?;
        if self.expires_at <= self.issued_at {
            return Err(Violation::new(
                "expiresAt",
                ViolationKind::BadValue("must be after issuedAt".into()),
            ));
        }
        if let Action::Write { value, .. } = &self.action
            && let Some(p) = value.problem()
        {
            return Err(Violation::new(
                "action.write.value",
                ViolationKind::BadValue(p),
            ));
        }
        Ok(())
    }
}

impl Reply {
    pub fn validate(&self) -> Result<(), Violation> {
        check_version(self.v)?;
        if let Some(p) = self.read_back.as_ref().and_then(Value::problem) {
            return Err(Violation::new("readBack", ViolationKind::BadValue(p)));
        }
        if self
            .detail
            .as_ref()
            .is_some_and(|d| d.chars().count() > 1024)
        {
            return Err(Violation::new(
                "detail",
                ViolationKind::BadValue("longer than 1024 characters".into()),
            ));
        }
        Ok(())
    }
}
