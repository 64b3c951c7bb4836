//! Process-wide CPU settings that make candle training faster, applied once at start-up.
//!
//! Two settings, measured on the 2-core development machine for a DeepLabV3+-ResNet-18 step
//! (see `docs/conv.md`): each saved about 15% of the step's CPU time.
//!
//! * candle's CPU thread pool spins 25,000 times waiting at each barrier before it sleeps; with
//!   many small operations per step that spinning takes cores the other threads need. We lower
//!   it to [`SPIN_LIMIT`] through `CANDLE_BARRIER_POOL_SPIN_LIMIT` (unless the user set it).
//! * glibc returns freed memory of large blocks to the kernel at once, so every training step
//!   page-faults its activation buffers anew. We raise the mmap and trim thresholds so freed
//!   buffers are reused (Linux with glibc only; elsewhere nothing happens).
//!
//! Set `RECALLSEG_NO_CPU_TUNING=1` to leave the process as it is.

/// Spin count at candle's CPU barriers after tuning.
pub const SPIN_LIMIT: u32 = 200;

/// Largest `M_MMAP_THRESHOLD` glibc accepts on 64-bit targets (32 MiB).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD_MAX: i32 = 32 * 1024 * 1024;

/// What [`tune_cpu_runtime`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTuning {
    /// The spin limit was set (false when the user had set it, or tuning was disabled).
    pub spin_limit_set: bool,
    /// glibc's allocator thresholds were raised.
    pub allocator_tuned: bool,
}

/// Applies the settings above. Call it first thing in `main`, before any thread is spawned and
/// before the first candle operation (candle reads the spin limit once).
pub fn tune_cpu_runtime() -> CpuTuning {
    if std::env::var_os("RECALLSEG_NO_CPU_TUNING").is_some_and(|v| v != "0") {
        return CpuTuning {
            spin_limit_set: false,
            allocator_tuned: false,
        };
    }
    let spin_limit_set = std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none();
    if spin_limit_set {
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", SPIN_LIMIT.to_string());
    }
    CpuTuning {
        spin_limit_set,
        allocator_tuned: tune_allocator(),
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_allocator() -> bool {
    extern "C" {
        fn mallopt(param: std::ffi::c_int, value: std::ffi::c_int) -> std::ffi::c_int;
    }
    const M_TRIM_THRESHOLD: std::ffi::c_int = -1;
    const M_MMAP_THRESHOLD: std::ffi::c_int = -3;
    // SAFETY: mallopt only changes glibc allocator parameters; it returns 0 on a rejected value.
    unsafe {
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX) == 1
            && mallopt(M_TRIM_THRESHOLD, std::ffi::c_int::MAX) == 1
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tuning_sets_the_spin_limit_and_the_allocator() {
        let t = tune_cpu_runtime();
        let spin = std::env::var("CANDLE_BARRIER_POOL_SPIN_LIMIT").expect("spin limit set");
        if t.spin_limit_set {
            assert_eq!(spin, SPIN_LIMIT.to_string());
        }
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        assert!(t.allocator_tuned, "glibc rejected the allocator thresholds");
        // Idempotent: a second call keeps what the first set.
        let again = tune_cpu_runtime();
        assert!(!again.spin_limit_set);
        assert_eq!(
            std::env::var("CANDLE_BARRIER_POOL_SPIN_LIMIT").unwrap(),
            spin
        );
    }
}
