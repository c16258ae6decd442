//! Gateway health figures read from Linux: CPU temperature (Raspberry Pi thermal zone) and own memory.

/// CPU temperature in °C from the first thermal zone, where there is one.
pub fn cpu_temp_c() -> Option<f64> {
    let s = std::fs::read_to_string("/sys/class/thermal/thermal_zone0/temp").ok()?;
    let milli: f64 = s.trim().parse().ok()?;
    Some(milli / 1000.0).filter(|t| t.is_finite())
}

/// This process's resident memory in bytes.
pub fn rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Bytes free for unprivileged use on the file system holding `path` (the spool's SD card).
pub fn disk_free_bytes(path: &std::path::Path) -> Option<u64> {
    let st = nix::sys::statvfs::statvfs(path).ok()?;
    Some((st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64))
}
