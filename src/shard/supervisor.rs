//! A shard that dies is loud (design principle 8): its panic is logged at error level
//! with the message, counted, and the shard is started again. Other shards keep
//! serving meanwhile; their listeners are independent.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Runs `body` until it returns normally, restarting it after each panic with a
/// backoff (100 ms doubling to 5 s) so a shard that dies at once does not spin;
/// a run that lasted a minute starts the backoff over. The panic itself is
/// logged at error level by the process's panic hook (`logging::init`), with
/// its location; this line says what follows from it.
pub fn supervise(label: &str, restarts: &AtomicU64, mut body: impl FnMut()) {
    const FIRST: Duration = Duration::from_millis(100);
    let mut backoff = FIRST;
    loop {
        let started = std::time::Instant::now();
        match catch_unwind(AssertUnwindSafe(&mut body)) {
            Ok(()) => return,
            Err(payload) => {
                let n = restarts.fetch_add(1, Ordering::Relaxed) + 1;
                if started.elapsed() >= Duration::from_secs(60) {
                    backoff = FIRST;
                }
                log::warn!(
                    "{label} died: {}; restarting it (restart #{n}) in {} ms",
                    panic_message(&*payload),
                    backoff.as_millis()
                );
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

pub use crate::logging::panic_message;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_after_panics_then_returns() {
        let restarts = AtomicU64::new(0);
        let mut runs = 0;
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {})); // keep test output clean
        supervise("test-shard", &restarts, || {
            runs += 1;
            if runs < 3 {
                panic!("boom {runs}");
            }
        });
        std::panic::set_hook(prev);
        assert_eq!(runs, 3);
        assert_eq!(restarts.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn messages() {
        assert_eq!(panic_message(&"static"), "static");
        assert_eq!(panic_message(&String::from("owned")), "owned");
        assert_eq!(panic_message(&42u8), "(non-string panic payload)");
    }
}
