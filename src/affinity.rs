//! Pinning worker threads to cores, and what happens where pinning is unavailable.

/// Pins the calling thread to core `index mod cores`. Returns the core it is pinned to, or
/// `None` (with a warning) where the platform or a cgroup forbids it: the server then runs
/// unpinned rather than refusing to start.
pub fn pin_current(index: usize) -> Option<usize> {
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    if cores.is_empty() {
        log::warn!("cannot read the CPU set; worker {index} runs unpinned");
        return None;
    }
    let core = cores[index % cores.len()];
    if core_affinity::set_for_current(core) {
        Some(core.id)
    } else {
        log::warn!(
            "pinning worker {index} to core {} failed; it runs unpinned",
            core.id
        );
        None
    }
}
