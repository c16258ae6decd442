//! Read plans: which Modbus requests poll one device, pure.
//!
//! Fields are sorted by table and address and merged into one request while the gap between them
//! is at most `max_gap` and the request stays within `max_registers` (or `max_bits`). Fewer, longer
//! requests save bus time on slow RS-485 lines; the knobs exist because some devices reject long
//! reads or reads of unmapped registers.

use std::cmp::max;

use crate::profile::{Profile, RequestKnobs, Table};

/// One read request and the fields it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRequest {
    pub table: Table,
    /// First address on the wire (0-based).
    pub start: u16,
    /// Registers (or bits) to read.
    pub count: u16,
    /// The fields in the response, in address order.
    pub fields: Vec<Slot>,
}

/// Where one field sits in a request's response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// Index into the profile's fields.
    pub field: usize,
    /// Registers (or bits) from the start of the response.
    pub offset: u16,
    pub len: u16,
}

impl ReadRequest {
    /// Last wire address read.
    pub fn end(&self) -> u16 {
        self.start.saturating_add(self.count.saturating_sub(1))
    }
}

/// Plans the requests that read every field of `profile` with the effective `knobs`. Fields whose
/// address does not fit the wire (validation reports them) are left out.
pub fn plan_reads(profile: &Profile, knobs: &RequestKnobs) -> Vec<ReadRequest> {
    let mut fields: Vec<(Table, u32, u32, usize)> = profile
        .fields
        .iter()
        .enumerate()
        .filter_map(|(i, f)| {
            Some((
                f.table,
                u32::from(f.wire_address(knobs.address_base)?),
                u32::from(f.size()),
                i,
            ))
        })
        .collect();
    fields.sort_by_key(|&(table, start, _, i)| (table, start, i));
    let mut out: Vec<ReadRequest> = Vec::new();
    for (table, start, len, field) in fields {
        let end = start + len;
        if let Some(cur) = out.last_mut()
            && cur.table == table
        {
            let (cur_start, cur_end) = (
                u32::from(cur.start),
                u32::from(cur.start) + u32::from(cur.count),
            );
            let limit = u32::from(if table.is_bits() {
                knobs.max_bits
            } else {
                knobs.max_registers
            });
            let new_end = max(cur_end, end);
            let merge = if knobs.one_request_per_field {
                // Fields on exactly the same registers (bits of one status word) still share a read.
                start == cur_start && end == cur_end
            } else {
                start.saturating_sub(cur_end) <= u32::from(knobs.max_gap)
                    && new_end - cur_start <= limit
            };
            if merge {
                cur.count = u16::try_from(new_end - cur_start).unwrap_or(u16::MAX);
                cur.fields.push(slot(field, start - cur_start, len));
                continue;
            }
        }
        out.push(ReadRequest {
            table,
            start: u16::try_from(start).unwrap_or(u16::MAX),
            count: u16::try_from(len).unwrap_or(u16::MAX),
            fields: vec![slot(field, 0, len)],
        });
    }
    out
}

fn slot(field: usize, offset: u32, len: u32) -> Slot {
    Slot {
        field,
        offset: u16::try_from(offset).unwrap_or(u16::MAX),
        len: u16::try_from(len).unwrap_or(u16::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(fields: &[(&str, &str, u32, &str)]) -> Profile {
        let mut src = String::from("name = \"p\"\nkind = \"other\"\n");
        for (metric, table, address, ty) in fields {
            let bit = if *ty == "bit" {
                format!("bit = {}\n", address % 16)
            } else {
                String::new()
            };
            let address = if *ty == "bit" { address / 16 } else { *address };
            src += &format!(
                "[[field]]\nmetric = \"{metric}\"\ntable = \"{table}\"\naddress = {address}\ntype = \"{ty}\"\n{bit}"
            );
        }
        toml::from_str(&src).unwrap()
    }

    fn spans(plan: &[ReadRequest]) -> Vec<(Table, u16, u16, Vec<usize>)> {
        plan.iter()
            .map(|r| {
                (
                    r.table,
                    r.start,
                    r.count,
                    r.fields.iter().map(|s| s.field).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn merges_contiguous_fields_per_table() {
        let p = profile(&[
            ("c", "holding", 2, "u32"),
            ("a", "holding", 0, "u16"),
            ("b", "holding", 1, "u16"),
            ("s", "coil", 0, "bool"),
        ]);
        let plan = plan_reads(&p, &RequestKnobs::default());
        assert_eq!(
            spans(&plan),
            vec![
                (Table::Coil, 0, 1, vec![3]),
                (Table::Holding, 0, 4, vec![1, 2, 0])
            ]
        );
        assert_eq!(
            plan[1].fields[2],
            Slot {
                field: 0,
                offset: 2,
                len: 2
            }
        );
    }

    #[test]
    fn gaps_and_limits_split_requests() {
        let p = profile(&[
            ("a", "input", 0, "u16"),
            ("b", "input", 3, "u16"),
            ("c", "input", 10, "u32"),
        ]);
        let knobs = RequestKnobs {
            max_gap: 2,
            ..RequestKnobs::default()
        };
        assert_eq!(
            spans(&plan_reads(&p, &knobs)),
            vec![
                (Table::Input, 0, 4, vec![0, 1]),
                (Table::Input, 10, 2, vec![2])
            ]
        );
        let wide = RequestKnobs {
            max_gap: 10,
            ..RequestKnobs::default()
        };
        assert_eq!(
            spans(&plan_reads(&p, &wide)),
            vec![(Table::Input, 0, 12, vec![0, 1, 2])]
        );
        let short = RequestKnobs {
            max_gap: 10,
            max_registers: 8,
            ..RequestKnobs::default()
        };
        assert_eq!(spans(&plan_reads(&p, &short)).len(), 2);
    }

    #[test]
    fn one_request_per_field_still_shares_a_status_word() {
        let p = profile(&[
            ("a", "input", 0, "u16"),
            ("f1", "input", 16, "bit"),
            ("f2", "input", 17, "bit"),
            ("b", "input", 2, "u16"),
        ]);
        let knobs = RequestKnobs {
            one_request_per_field: true,
            ..RequestKnobs::default()
        };
        assert_eq!(
            spans(&plan_reads(&p, &knobs)),
            vec![
                (Table::Input, 0, 1, vec![0]),
                (Table::Input, 1, 1, vec![1, 2]),
                (Table::Input, 2, 1, vec![3])
            ]
        );
    }

    #[test]
    fn address_base_one_shifts_to_wire_addresses() {
        let p = profile(&[("a", "holding", 1, "u16"), ("b", "holding", 2, "u16")]);
        let knobs = RequestKnobs {
            address_base: 1,
            ..RequestKnobs::default()
        };
        assert_eq!(
            spans(&plan_reads(&p, &knobs)),
            vec![(Table::Holding, 0, 2, vec![0, 1])]
        );
    }
}
