//! Modbus links: the transport-neutral [`link::ModbusLink`] and its Modbus TCP implementation.

pub mod link;
pub mod tcp;

pub use firmware_config::profile::Table;
