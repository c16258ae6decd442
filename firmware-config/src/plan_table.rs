//! The human-readable read plan (`edge-agent config plan FILE`): per bus and device, the requests
//! of one poll cycle with 0-based wire addresses, the fields each serves and the estimated bus time.

use std::fmt;

use crate::config::{Bus, GatewayConfig};
use crate::timing::UTILISATION_WARNING;

/// Displays the read plan of a whole gateway.
#[derive(Debug, Clone, Copy)]
pub struct PlanTable<'a>(pub &'a GatewayConfig);

impl GatewayConfig {
    /// The read plan, for display.
    pub fn plan_table(&self) -> PlanTable<'_> {
        PlanTable(self)
    }
}

impl fmt::Display for PlanTable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.0;
        let devices = c.buses.iter().map(|b| b.devices.len()).sum::<usize>();
        writeln!(
            f,
            "gateway {} ({}): {} buses, {devices} devices",
            c.gateway,
            c.file.display(),
            c.buses.len()
        )?;
        writeln!(
            f,
            "    {:<15}{:<12}{:<10}{:>10}  fields",
            "table", "wire addr", "count", "bus time"
        )?;
        for bus in &c.buses {
            write_bus(f, bus)?;
        }
        Ok(())
    }
}

fn write_bus(f: &mut fmt::Formatter<'_>, bus: &Bus) -> fmt::Result {
    writeln!(
        f,
        "bus {} ({}, timeout {} ms, pause {} ms)",
        bus.name, bus.link, bus.timeout_ms, bus.pause_ms
    )?;
    for d in &bus.devices {
        writeln!(
            f,
            "  {} unit {} {} every {} ms (asset {})",
            d.id, d.unit, d.profile.name, d.poll_ms, d.asset
        )?;
        for r in &d.requests {
            let what = match (r.table.is_bits(), r.count) {
                (true, 1) => "bit",
                (true, _) => "bits",
                (false, 1) => "reg",
                (false, _) => "regs",
            };
            let metrics: Vec<&str> = r
                .fields
                .iter()
                .filter_map(|s| d.profile.fields.get(s.field))
                .map(|x| x.metric.as_str())
                .collect();
            let span = format!("{}..{}", r.start, r.end());
            let count = format!("{} {what}", r.count);
            let ms = bus.timing.request_ms(r);
            writeln!(
                f,
                "    {:<15}{span:<12}{count:<10}~{ms:>6.1} ms  {}",
                r.table.as_str(),
                metrics.join(", ")
            )?;
        }
        let share = 100.0 * d.cycle_ms / f64::from(d.poll_ms.max(1));
        writeln!(
            f,
            "    cycle ~{:.1} ms = {share:.1} % of the poll interval",
            d.cycle_ms
        )?;
    }
    let u = bus.utilisation() * 100.0;
    let verdict = match bus.utilisation() {
        x if x > 1.0 => "OVERLOADED",
        x if x > UTILISATION_WARNING => "busy",
        _ => "ok",
    };
    writeln!(
        f,
        "  bus utilisation {u:.1} % ({verdict}; warning above {:.0} %, error above 100 %)",
        UTILISATION_WARNING * 100.0
    )
}
