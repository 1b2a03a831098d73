//! What bounds one plugin call: the CPU time its thread spends in it (checked each time the
//! epoch deadline fires), and a wall-clock ceiling so that a call whose thread never runs ends.

use std::time::{Duration, Instant};

use wasmtime::UpdateDeadline;

use super::engine::deadline_ticks;

/// The wall-clock ceiling of a call is this many times its CPU budget ...
pub const WALL_CEILING_FACTOR: u32 = 20;
/// ... and never less than this, so that a small budget does not turn an ordinary scheduling
/// delay (tens to hundreds of ms on a loaded host) into a cut.
pub const MIN_WALL_CEILING: Duration = Duration::from_secs(1);

/// The wall-clock ceiling of a call with CPU budget `budget`: 20 × the budget, at least 1 s.
pub fn wall_ceiling(budget: Duration) -> Duration {
    budget.saturating_mul(WALL_CEILING_FACTOR).max(MIN_WALL_CEILING)
}

/// Why a call was interrupted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// It used its whole CPU budget: the plugin's own work ran too long.
    Overran,
    /// It reached the wall-clock ceiling with CPU budget left: its thread was not scheduled
    /// enough (the host is overloaded), which says nothing about the plugin.
    Ceiling,
}

/// The budget of the call in progress on a store, kept in its data for the epoch callback.
#[derive(Debug, Clone, Copy)]
pub struct CallBudget {
    cpu: Duration,
    ceiling: Duration,
    cpu_start: Duration,
    wall_start: Instant,
    cut: Option<Cut>,
    /// The CPU time used when the call was cut.
    used_at_cut: Duration,
}

impl CallBudget {
    /// Starts the clocks of a call on this thread with `cpu` of CPU time and `ceiling` of wall time.
    pub fn start(cpu: Duration, ceiling: Duration) -> CallBudget {
        let (cpu_start, wall_start) = (thread_cpu_time(), Instant::now());
        CallBudget { cpu, ceiling, cpu_start, wall_start, cut: None, used_at_cut: Duration::ZERO }
    }

    /// Epoch ticks until the first check: the CPU budget can be spent no sooner.
    pub fn first_check(&self) -> u64 {
        deadline_ticks(self.cpu)
    }

    /// Why the call was interrupted (if it was), and the CPU time it had used by then.
    pub fn cut(&self) -> Option<(Cut, Duration)> {
        self.cut.map(|cut| (cut, self.used_at_cut))
    }

    /// The wall-clock ceiling of this call.
    pub fn ceiling(&self) -> Duration {
        self.ceiling
    }

    /// The epoch deadline passed (on the calling thread, inside the call): go on for what is left,
    /// or interrupt and remember why.
    pub fn on_epoch(&mut self) -> UpdateDeadline {
        let used = thread_cpu_time().saturating_sub(self.cpu_start);
        match next(self.cpu, self.ceiling, used, self.wall_start.elapsed()) {
            Ok(left) => UpdateDeadline::Continue(deadline_ticks(left)),
            Err(cut) => {
                (self.cut, self.used_at_cut) = (Some(cut), used);
                UpdateDeadline::Interrupt
            }
        }
    }
}

/// After `used` of CPU and `elapsed` of wall time: the time until the next check (the least
/// that can pass before either limit is reached), or why the call must stop. An overrun
/// wins over the ceiling: a call that used its budget overran, however late it is.
fn next(budget: Duration, ceiling: Duration, used: Duration, elapsed: Duration) -> Result<Duration, Cut> {
    if used >= budget {
        return Err(Cut::Overran);
    }
    if elapsed >= ceiling {
        return Err(Cut::Ceiling);
    }
    Ok((budget - used).min(ceiling - elapsed))
}

/// The CPU time the calling thread has used (Linux `CLOCK_THREAD_CPUTIME_ID`).
pub fn thread_cpu_time() -> Duration {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `now` is a valid, writable timespec; this clock exists for every thread.
    let status = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &raw mut now) };
    if status != 0 {
        return Duration::ZERO;
    }
    Duration::new(u64::try_from(now.tv_sec).unwrap_or(0), u32::try_from(now.tv_nsec).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_ceiling_is_a_multiple_of_the_budget_with_a_floor() {
        assert_eq!(wall_ceiling(5 * MS), MIN_WALL_CEILING);
        assert_eq!(wall_ceiling(50 * MS), 1000 * MS);
        assert_eq!(wall_ceiling(200 * MS), 4000 * MS);
    }

    #[test]
    fn a_late_call_with_budget_left_goes_on_for_what_is_left() {
        // Descheduled: 40 ms of wall time, 1 ms of CPU; 49 ms of CPU left, ceiling 960 ms away.
        assert_eq!(next(50 * MS, 1000 * MS, MS, 40 * MS), Ok(49 * MS));
        // Near the ceiling, the next check comes at the ceiling.
        assert_eq!(next(50 * MS, 1000 * MS, MS, 990 * MS), Ok(10 * MS));
    }

    #[test]
    fn a_spent_budget_is_an_overrun_even_past_the_ceiling() {
        assert_eq!(next(50 * MS, 1000 * MS, 50 * MS, 60 * MS), Err(Cut::Overran));
        assert_eq!(next(50 * MS, 1000 * MS, 51 * MS, 2000 * MS), Err(Cut::Overran));
    }

    #[test]
    fn the_ceiling_stops_a_call_whose_thread_does_not_run() {
        assert_eq!(next(50 * MS, 1000 * MS, MS, 1000 * MS), Err(Cut::Ceiling));
    }

    #[test]
    fn thread_cpu_time_counts_this_threads_work_only() {
        let before = thread_cpu_time();
        std::thread::sleep(50 * MS);
        assert!(thread_cpu_time() - before < 50 * MS, "a sleeping thread used no CPU for most of its sleep");
        let (before, spinning) = (thread_cpu_time(), Instant::now());
        let mut n = 0u64;
        while thread_cpu_time() - before < 2 * MS {
            n = std::hint::black_box(n + 1);
            assert!(spinning.elapsed() < Duration::from_secs(30), "spinning never showed as CPU time");
        }
    }
}
