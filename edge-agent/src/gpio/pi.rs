//! The Raspberry Pi backend, through rppal (the GPIO character device for interrupts, `/dev/gpiomem`
//! for levels). Inputs report every edge from rppal's interrupt thread with no kernel debounce: the
//! agent debounces, the same way for every backend.

use firmware_config::gpio::Pull;
use rppal::gpio::{Gpio, InputPin, OutputPin, Trigger};
use tokio::sync::mpsc;

use super::backend::{GpioBackend, GpioError, InputConfig, InputLine, OutputLine, RawEdge};

#[derive(Debug)]
pub struct Pi {
    gpio: Gpio,
}

fn error(e: rppal::gpio::Error) -> GpioError {
    GpioError(e.to_string())
}

impl Pi {
    /// Opens the GPIO peripheral; fails on a machine that is not a Raspberry Pi.
    pub fn open() -> Result<Self, GpioError> {
        Gpio::new().map(|gpio| Pi { gpio }).map_err(error)
    }
}

#[derive(Debug)]
struct PiInput {
    pin: InputPin,
}

impl InputLine for PiInput {
    fn is_high(&self) -> Result<bool, GpioError> {
        Ok(self.pin.is_high())
    }
}

#[derive(Debug)]
struct PiOutput {
    pin: OutputPin,
}

impl OutputLine for PiOutput {
    fn set(&mut self, high: bool) -> Result<(), GpioError> {
        self.pin.write(high.into());
        Ok(())
    }

    fn is_high(&self) -> Result<bool, GpioError> {
        Ok(self.pin.is_set_high())
    }
}

impl GpioBackend for Pi {
    fn name(&self) -> &'static str {
        "rppal"
    }

    fn input(
        &self,
        input: InputConfig,
        edges: mpsc::Sender<RawEdge>,
    ) -> Result<Box<dyn InputLine>, GpioError> {
        let pin = self.gpio.get(input.pin).map_err(error)?;
        let mut pin = match input.pull {
            Pull::Up => pin.into_input_pullup(),
            Pull::Down => pin.into_input_pulldown(),
            Pull::None => pin.into_input(),
        };
        // Runs on rppal's interrupt thread, outside the runtime: a full channel holds that thread
        // (backpressure) rather than dropping a pulse.
        pin.set_async_interrupt(Trigger::Both, None, move |event| {
            let high = match event.trigger {
                Trigger::RisingEdge => true,
                Trigger::FallingEdge => false,
                Trigger::Both | Trigger::Disabled => return,
            };
            let _ = edges.blocking_send(RawEdge::now(high));
        })
        .map_err(error)?;
        Ok(Box::new(PiInput { pin }))
    }

    fn output(&self, pin: u8, high: bool) -> Result<Box<dyn OutputLine>, GpioError> {
        let pin = self.gpio.get(pin).map_err(error)?;
        let mut pin = if high {
            pin.into_output_high()
        } else {
            pin.into_output_low()
        };
        // Keep the safe level the agent set when it stops, instead of floating the relay's input.
        pin.set_reset_on_drop(false);
        Ok(Box::new(PiOutput { pin }))
    }
}
