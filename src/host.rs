//! Facts about the machine lookalike runs on.

/// Memory the kernel could give this process without swapping (`MemAvailable` in
/// `/proc/meminfo`); `None` where that is not known.
pub fn available_memory_bytes() -> Option<usize> {
    parse_mem_available(&std::fs::read_to_string("/proc/meminfo").ok()?)
}

fn parse_mem_available(meminfo: &str) -> Option<usize> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: usize = line.trim_start_matches("MemAvailable:").trim().trim_end_matches("kB").trim().parse().ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn available_memory_is_read_from_meminfo() {
        let meminfo = "MemTotal:       24575392 kB\nMemFree:         1018112 kB\nMemAvailable:   20971520 kB\nBuffers:          123 kB\n";
        assert_eq!(parse_mem_available(meminfo), Some(20 << 30));
        assert_eq!(parse_mem_available("MemTotal: 1 kB\n"), None);
        assert_eq!(parse_mem_available("MemAvailable: lots\n"), None);
        if cfg!(target_os = "linux") {
            assert!(available_memory_bytes().is_some_and(|b| b > 0), "this machine reports its available memory");
        }
    }
}
