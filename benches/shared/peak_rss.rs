//! The peak resident memory of a child process: its `VmHWM`, sampled every
//! 5 ms until it exits (shared by the benchmarks that run our commands as
//! processes of their own).

use std::process::{Child, Output};
use std::time::Duration;

/// Waits for `child`, sampling its peak RSS; returns it (KiB) and the output.
pub fn wait_sampling_peak(mut child: Child) -> (u64, Output) {
    let status_path = format!("/proc/{}/status", child.id());
    let mut peak_kib = 0u64;
    loop {
        if let Ok(status) = std::fs::read_to_string(&status_path) {
            if let Some(kib) = status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            {
                peak_kib = peak_kib.max(kib);
            }
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    (peak_kib, child.wait_with_output().unwrap())
}
