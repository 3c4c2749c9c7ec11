//! Fault-injection switches: test builds only (`--features fault-injection`),
//! and only with `CAIRN_FAULT_INJECTION=1` in the environment, so such a
//! binary installed by mistake is inert (and says so at start). Without the
//! feature every switch is a constant `false`.

/// Is this a fault-injection build with its faults armed?
#[cfg(feature = "fault-injection")]
pub fn armed() -> bool {
    static ARMED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ARMED.get_or_init(|| set("CAIRN_FAULT_INJECTION"))
}

/// A fault a test can ask for with `<its variable>=1`.
#[derive(Debug, Clone, Copy)]
pub enum Switch {
    /// The kernel refuses io_uring cancel by fd (as before Linux 5.19):
    /// `CAIRN_FAULT_NO_CANCEL`.
    NoCancel,
    /// The keep-alive table's task ignores readiness, so that a drain, not
    /// a wake, finds a waiting request: `CAIRN_FAULT_PARKER_DEAF`.
    ParkerDeaf,
}

/// Whether `switch` is on (read once per process).
pub fn on(switch: Switch) -> bool {
    #[cfg(feature = "fault-injection")]
    {
        use std::sync::OnceLock;
        static ON: [OnceLock<bool>; 2] = [const { OnceLock::new() }; 2];
        let (i, var) = match switch {
            Switch::NoCancel => (0, "CAIRN_FAULT_NO_CANCEL"),
            Switch::ParkerDeaf => (1, "CAIRN_FAULT_PARKER_DEAF"),
        };
        *ON[i].get_or_init(|| armed() && set(var))
    }
    #[cfg(not(feature = "fault-injection"))]
    {
        let _ = switch;
        false
    }
}

#[cfg(feature = "fault-injection")]
fn set(var: &str) -> bool {
    std::env::var_os(var).is_some_and(|v| v == "1")
}
