//! A Modbus link as the pollers see it: read a block of one register table from one unit, write a
//! coil or registers, each with a timeout; failures typed so that "the device said no" stays apart
//! from "the link is down". Real links (TCP here) and test fakes implement [`ModbusLink`].

use std::future::Future;

use thiserror::Error;

use super::Table;

/// What a read returned: registers for the register tables, bits for coils and discrete inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registers {
    Words(Vec<u16>),
    Bits(Vec<bool>),
}

impl Registers {
    /// The data as the decoders take it.
    pub fn raw(&self) -> firmware_config::Raw<'_> {
        match self {
            Registers::Words(w) => firmware_config::Raw::Words(w),
            Registers::Bits(b) => firmware_config::Raw::Bits(b),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LinkError {
    /// No reply in time. The link is reset before the next request so a late reply cannot be taken
    /// for the answer to it.
    #[error("no reply within {ms} ms")]
    Timeout { ms: u64 },
    /// The connection could not be made or broke.
    #[error("link down: {0}")]
    Down(String),
    /// The device answered with a Modbus exception.
    #[error("device exception {code:#04x} ({name})")]
    Exception { code: u8, name: String },
    /// A reply arrived that does not belong to the request (wrong header, function or length).
    #[error("corrupt reply: {0}")]
    Corrupt(String),
}

impl LinkError {
    /// The reading quality a failed read gives its fields.
    pub fn bad_reason(&self) -> protocol::BadReason {
        match self {
            LinkError::Timeout { .. } => protocol::BadReason::Timeout,
            LinkError::Down(_) => protocol::BadReason::LinkDown,
            LinkError::Exception { .. } => protocol::BadReason::DeviceException,
            LinkError::Corrupt(_) => protocol::BadReason::CorruptReply,
        }
    }

    /// Whether the device itself answered (so it is alive, even though it refused).
    pub fn device_answered(&self) -> bool {
        matches!(self, LinkError::Exception { .. })
    }
}

/// One bus (or one TCP connection to a device or a serial gateway) shared by the units on it.
pub trait ModbusLink: Send {
    /// Reads `count` registers or bits from `table` of `unit`, starting at wire address `start`.
    fn read(
        &mut self,
        unit: u8,
        table: Table,
        start: u16,
        count: u16,
    ) -> impl Future<Output = Result<Registers, LinkError>> + Send;

    /// Writes registers (holding) or one coil value per entry (coils).
    fn write(
        &mut self,
        unit: u8,
        table: Table,
        start: u16,
        data: Registers,
    ) -> impl Future<Output = Result<(), LinkError>> + Send;

    /// Human description for logs, e.g. `tcp 127.0.0.1:15020`.
    fn describe(&self) -> String;
}
