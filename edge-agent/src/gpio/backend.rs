//! The small interface between the agent's GPIO logic and a pin driver: open an input (it reports raw
//! level changes, bounces and all, into a channel) or an output (it sets and reads back a level).
//! Levels are electrical (`true` = high); what "active" means is the agent's business, and so is
//! debouncing, so every backend runs the same logic.

use std::fmt;

use firmware_config::gpio::Pull;
use protocol::Timestamp;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Why a backend could not open or drive a pin.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct GpioError(pub String);

/// A raw level change of an input, as the backend saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawEdge {
    /// The level after the change.
    pub high: bool,
    /// When, on the monotonic clock (for debouncing).
    pub at: Instant,
    /// When, on the wall clock (for the event's `observedAt`).
    pub wall: Timestamp,
}

impl RawEdge {
    /// A change to `high` seen now.
    pub fn now(high: bool) -> Self {
        Self {
            high,
            at: Instant::now(),
            wall: Timestamp::now(),
        }
    }
}

/// How to open an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputConfig {
    /// BCM GPIO number.
    pub pin: u8,
    pub pull: Pull,
    /// The level of the input at rest (inactive contact, no pulse); the simulated backend reads it
    /// when the pin's file is absent.
    pub idle_high: bool,
}

/// A pin driver.
pub trait GpioBackend: Send + Sync + fmt::Debug {
    /// `rppal` or `simulated`, for logs.
    fn name(&self) -> &'static str;
    /// Opens `input`; from then on every raw level change goes to `edges` until the line is dropped.
    fn input(
        &self,
        input: InputConfig,
        edges: mpsc::Sender<RawEdge>,
    ) -> Result<Box<dyn InputLine>, GpioError>;
    /// Opens `pin` as an output driven to `high` at once.
    fn output(&self, pin: u8, high: bool) -> Result<Box<dyn OutputLine>, GpioError>;
}

/// An open input; dropping it releases the pin and stops its edges.
pub trait InputLine: Send + fmt::Debug {
    /// The level now.
    fn is_high(&self) -> Result<bool, GpioError>;
}

/// An open output; dropping it leaves the pin at its last level.
pub trait OutputLine: Send + fmt::Debug {
    fn set(&mut self, high: bool) -> Result<(), GpioError>;
    /// The level the pin is driven to, read back from the driver.
    fn is_high(&self) -> Result<bool, GpioError>;
}
