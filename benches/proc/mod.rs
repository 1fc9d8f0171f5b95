//! What `/proc` says of a process, for the benchmarks (Linux).

/// A field of `/proc/<pid>/status` (`pid` "self" for this process) in KiB
/// (`VmHWM:` is the peak RSS); 0 when it cannot be read.
pub fn status_kib(pid: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// CPU time (user and system) process `pid` ("self" for this one) has used
/// so far, in seconds: fields 14 and 15 of `/proc/<pid>/stat`, in clock
/// ticks. The fields are counted after the command name's closing
/// parenthesis, which may itself hold spaces.
pub fn cpu_secs(pid: &str) -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            // After the name: state is field 3, utime 14, stime 15.
            let utime: f64 = f.get(11)?.parse().ok()?;
            let stime: f64 = f.get(12)?.parse().ok()?;
            Some((utime + stime) / ticks)
        })
        .unwrap_or(0.0)
}
