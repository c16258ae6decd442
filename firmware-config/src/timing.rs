//! Bus time estimates: how long one request, one device's poll cycle and one bus's round take.
//!
//! An RS-485 line serves one request at a time, so a bus can only poll as often as its baud rate
//! allows. The estimate counts frame bytes at the line's character size, the 3.5-character silence
//! that delimits RTU frames and the configured pause between requests; TCP links get a fixed cost.
//! Validation uses it to refuse poll intervals a bus cannot serve, and the plan table shows it.

use std::fmt;

use crate::gateway::{BusKind, BusSpec, Parity};
use crate::plan::ReadRequest;

/// Assumed round trip of one request on a TCP link (LAN or a serial server's network side).
pub const TCP_REQUEST_MS: f64 = 5.0;
/// Bytes of an RTU read request: unit, function, address (2), count (2), CRC (2).
pub const RTU_REQUEST_BYTES: u32 = 8;
/// Bytes of an RTU read response besides its data: unit, function, byte count, CRC (2).
pub const RTU_RESPONSE_OVERHEAD: u32 = 5;
/// Utilisation above which a bus is reported as nearly saturated.
pub const UTILISATION_WARNING: f64 = 0.8;

/// A serial line's settings, with defaults applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SerialLine {
    pub baud: u32,
    pub parity: Parity,
    pub data_bits: u8,
    pub stop_bits: u8,
}

impl SerialLine {
    /// Bits on the wire per character: start, data, parity (if any), stop.
    pub fn char_bits(&self) -> u32 {
        1 + u32::from(self.data_bits)
            + u32::from(self.parity != Parity::None)
            + u32::from(self.stop_bits)
    }

    /// Milliseconds to send `bytes` characters.
    pub fn bytes_ms(&self, bytes: u32) -> f64 {
        f64::from(bytes * self.char_bits()) * 1000.0 / f64::from(self.baud.max(1))
    }

    /// The silence that ends an RTU frame: 3.5 characters, fixed at 1.75 ms above 19200 baud (as
    /// the Modbus serial line specification recommends).
    pub fn frame_gap_ms(&self) -> f64 {
        if self.baud > 19_200 {
            1.75
        } else {
            3.5 * self.bytes_ms(1)
        }
    }
}

/// `9600 8N1`.
impl fmt::Display for SerialLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}{}{}",
            self.baud,
            self.data_bits,
            self.parity.letter(),
            self.stop_bits
        )
    }
}

impl BusSpec {
    /// The serial settings with defaults (9600 8N1), for buses that have a serial side.
    pub fn serial_line(&self) -> Option<SerialLine> {
        let line = SerialLine {
            baud: self.baud.unwrap_or(9600),
            parity: self.parity.unwrap_or_default(),
            data_bits: self.data_bits.unwrap_or(8),
            stop_bits: self.stop_bits.unwrap_or(1),
        };
        match self.kind {
            BusKind::Rtu => Some(line),
            BusKind::RtuOverTcp if self.baud.is_some() => Some(line),
            BusKind::RtuOverTcp | BusKind::Tcp => None,
        }
    }

    pub fn timing(&self) -> BusTiming {
        BusTiming {
            serial: self.serial_line(),
            network: self.kind != BusKind::Rtu,
            pause_ms: self.pause_ms,
        }
    }
}

/// What the estimate needs to know about a bus.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BusTiming {
    /// The serial line, if requests cross one.
    pub serial: Option<SerialLine>,
    /// Requests cross a TCP network.
    pub network: bool,
    pub pause_ms: u32,
}

impl BusTiming {
    /// Estimated milliseconds one request occupies the bus, pause included.
    pub fn request_ms(&self, request: &ReadRequest) -> f64 {
        let mut ms = f64::from(self.pause_ms);
        if self.network {
            ms += TCP_REQUEST_MS;
        }
        if let Some(line) = &self.serial {
            let count = u32::from(request.count);
            let data = if request.table.is_bits() {
                count.div_ceil(8)
            } else {
                2 * count
            };
            ms += line.bytes_ms(RTU_REQUEST_BYTES + RTU_RESPONSE_OVERHEAD + data)
                + 2.0 * line.frame_gap_ms();
        }
        ms
    }

    /// Estimated milliseconds of one poll cycle made of `requests`.
    pub fn cycle_ms(&self, requests: &[ReadRequest]) -> f64 {
        requests.iter().map(|r| self.request_ms(r)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::Table;

    fn line(baud: u32) -> SerialLine {
        SerialLine {
            baud,
            parity: Parity::None,
            data_bits: 8,
            stop_bits: 1,
        }
    }

    fn read(table: Table, count: u16) -> ReadRequest {
        ReadRequest {
            table,
            start: 0,
            count,
            fields: Vec::new(),
        }
    }

    #[test]
    fn character_size_follows_the_frame_format() {
        assert_eq!(line(9600).char_bits(), 10);
        let even = SerialLine {
            parity: Parity::Even,
            ..line(9600)
        };
        assert_eq!(even.char_bits(), 11);
        assert_eq!(even.to_string(), "9600 8E1");
    }

    #[test]
    fn rtu_request_counts_bytes_and_silences() {
        let t = BusTiming {
            serial: Some(line(9600)),
            network: false,
            pause_ms: 20,
        };
        // 8 + 5 + 2*10 = 33 bytes of 10 bits at 9600 baud = 34.375 ms; two 3.5-char gaps 7.29 ms.
        let ms = t.request_ms(&read(Table::Holding, 10));
        assert!((ms - (34.375 + 7.291_666 + 20.0)).abs() < 0.01, "{ms}");
        // 16 coils are 2 data bytes.
        let bits = t.request_ms(&read(Table::Coil, 16));
        assert!((bits - (15.625 + 7.291_666 + 20.0)).abs() < 0.01, "{bits}");
    }

    #[test]
    fn fast_lines_use_a_fixed_gap_and_tcp_a_fixed_cost() {
        assert!((line(115_200).frame_gap_ms() - 1.75).abs() < 1e-9);
        let tcp = BusTiming {
            serial: None,
            network: true,
            pause_ms: 0,
        };
        assert_eq!(
            tcp.cycle_ms(&[read(Table::Input, 100), read(Table::Coil, 1)]),
            2.0 * TCP_REQUEST_MS
        );
    }
}
