//! Raw register data and byte order: turning a field's registers into big-endian bytes and back.
//!
//! Modbus registers are 16-bit words sent high byte first; how a device spreads a wider value over
//! several registers is its own choice, named by [`ByteOrder`]. Decoding first brings the bytes into
//! canonical big-endian order (ABCD), then interprets them.

use crate::profile::ByteOrder;

/// Raw data read from a device: registers (input, holding) or bits (coils, discrete inputs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Raw<'a> {
    Words(&'a [u16]),
    Bits(&'a [bool]),
}

impl Raw<'_> {
    /// Number of registers or bits.
    pub fn len(&self) -> usize {
        match self {
            Raw::Words(w) => w.len(),
            Raw::Bits(b) => b.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `len` items from `offset`, or `None` if the data is too short.
    pub fn slice(&self, offset: usize, len: usize) -> Option<Raw<'_>> {
        let end = offset.checked_add(len)?;
        match self {
            Raw::Words(w) => w.get(offset..end).map(Raw::Words),
            Raw::Bits(b) => b.get(offset..end).map(Raw::Bits),
        }
    }
}

/// The bytes of `words` in big-endian order (most significant first), undoing `order`.
pub fn to_bytes(words: &[u16], order: ByteOrder) -> Vec<u8> {
    let mut ordered: Vec<u16> = words.to_vec();
    if order.swaps_words() {
        ordered.reverse();
    }
    ordered
        .into_iter()
        .flat_map(|w| {
            if order.swaps_bytes() {
                w.to_le_bytes()
            } else {
                w.to_be_bytes()
            }
        })
        .collect()
}

/// The registers that carry big-endian `bytes` in `order`; the inverse of [`to_bytes`]. An odd
/// trailing byte is padded with zero.
pub fn from_bytes(bytes: &[u8], order: ByteOrder) -> Vec<u16> {
    let mut words: Vec<u16> = bytes
        .chunks(2)
        .map(|c| {
            let pair = [c[0], c.get(1).copied().unwrap_or(0)];
            if order.swaps_bytes() {
                u16::from_le_bytes(pair)
            } else {
                u16::from_be_bytes(pair)
            }
        })
        .collect();
    if order.swaps_words() {
        words.reverse();
    }
    words
}

/// The order strings use: text runs first register first, so only the byte order inside each
/// register applies.
pub fn string_order(order: ByteOrder) -> ByteOrder {
    if order.swaps_bytes() {
        ByteOrder::BADC
    } else {
        ByteOrder::ABCD
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f32_vectors_in_every_order() {
        let bits = 123.456f32.to_bits();
        assert_eq!(bits, 0x42F6_E979);
        let cases = [
            (ByteOrder::ABCD, [0x42F6, 0xE979]),
            (ByteOrder::CDAB, [0xE979, 0x42F6]),
            (ByteOrder::BADC, [0xF642, 0x79E9]),
            (ByteOrder::DCBA, [0x79E9, 0xF642]),
        ];
        for (order, words) in cases {
            assert_eq!(to_bytes(&words, order), bits.to_be_bytes(), "{order:?}");
            assert_eq!(from_bytes(&bits.to_be_bytes(), order), words, "{order:?}");
        }
    }

    #[test]
    fn sixty_four_bit_orders_extend_the_rule() {
        let v = 0x0102_0304_0506_0708u64.to_be_bytes();
        assert_eq!(
            from_bytes(&v, ByteOrder::ABCD),
            [0x0102, 0x0304, 0x0506, 0x0708]
        );
        assert_eq!(
            from_bytes(&v, ByteOrder::CDAB),
            [0x0708, 0x0506, 0x0304, 0x0102]
        );
        assert_eq!(
            from_bytes(&v, ByteOrder::BADC),
            [0x0201, 0x0403, 0x0605, 0x0807]
        );
        assert_eq!(
            from_bytes(&v, ByteOrder::DCBA),
            [0x0807, 0x0605, 0x0403, 0x0201]
        );
    }

    #[test]
    fn slices_check_bounds() {
        let words = [1, 2, 3];
        let raw = Raw::Words(&words);
        assert_eq!(raw.slice(1, 2), Some(Raw::Words(&[2, 3])));
        assert_eq!(raw.slice(2, 2), None);
        assert_eq!(raw.slice(usize::MAX, 2), None);
    }
}
