//! Modbus links: the transport-neutral [`link::ModbusLink`] and its tokio-modbus implementation
//! for TCP, serial RTU and RTU over TCP.

pub mod client;
pub mod link;

pub use firmware_config::profile::Table;
