//! Logging of refused connections without letting strangers flood the log.
//!
//! Every refusal is worth a line (who tried, from where), but a stranger can
//! cause thousands a second, and the log goes to the user's VS Code window
//! and log file. So a few lines per minute are written one by one and the
//! rest are counted, then summed up in one line.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lines written one by one per window.
const LINES_PER_WINDOW: u32 = 5;
const WINDOW: Duration = Duration::from_secs(60);

pub struct Refusals {
    what: &'static str,
    state: Mutex<Window>,
}

struct Window {
    started: Option<Instant>,
    written: u32,
    suppressed: u64,
}

impl Refusals {
    pub const fn new(what: &'static str) -> Refusals {
        Refusals { what, state: Mutex::new(Window { started: None, written: 0, suppressed: 0 }) }
    }

    /// Logs `line` at warn level unless this window's lines are spent.
    pub fn refused(&self, line: impl FnOnce() -> String) {
        self.refused_at(Instant::now(), line);
    }

    fn refused_at(&self, now: Instant, line: impl FnOnce() -> String) -> bool {
        let Ok(mut window) = self.state.lock() else { return false };
        let expired = window.started.is_none_or(|started| now.duration_since(started) >= WINDOW);
        if expired {
            if window.suppressed > 0 {
                tracing::warn!(
                    "{} more {} in the last minute, not logged one by one",
                    window.suppressed,
                    self.what
                );
            }
            *window = Window { started: Some(now), written: 0, suppressed: 0 };
        }
        if window.written < LINES_PER_WINDOW {
            window.written += 1;
            tracing::warn!("{}", line());
            true
        } else {
            window.suppressed += 1;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_counted_not_written() {
        let refusals = Refusals::new("refused connections");
        let start = Instant::now();
        let written = (0..10_000).filter(|_| refusals.refused_at(start, || "refused".into())).count();
        assert_eq!(written, LINES_PER_WINDOW as usize);
        assert_eq!(refusals.state.lock().unwrap().suppressed, 10_000 - u64::from(LINES_PER_WINDOW));
        // A new window writes again, after the summary.
        assert!(refusals.refused_at(start + WINDOW, || "refused".into()));
        assert_eq!(refusals.state.lock().unwrap().suppressed, 0);
    }
}
