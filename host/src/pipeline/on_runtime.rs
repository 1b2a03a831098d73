//! Waiting from a blocking thread for async work that runs as a task of the workers' runtime,
//! so that a runtime shutting down cancels the work instead of leaving the thread parked on it.

use std::future::Future;

use tokio::runtime::Handle;

/// The runtime shut down (or the task panicked) before the work finished.
#[derive(Debug, thiserror::Error)]
#[error("the runtime stopped the work: {0}")]
pub struct Stopped(#[from] tokio::task::JoinError);

/// Runs `work` as a task of `runtime` and blocks until it finishes. Unlike `block_on` of the work
/// itself, this returns when the runtime shuts down: its tasks (lapin's and sqlx's among them)
/// are dropped then, and a future that waits on them would never complete. Blocking: call it
/// from a worker thread or a blocking task.
///
/// # Errors
/// [`Stopped`] when the task was cancelled or panicked.
pub fn wait_on<F>(runtime: &Handle, work: F) -> Result<F::Output, Stopped>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    Ok(runtime.block_on(runtime.spawn(work))?)
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_runtime_shutting_down_ends_the_wait_of_its_blocking_task() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let handle = runtime.handle().clone();
        let (started, waiting) = mpsc::channel();
        let (ended, outcome) = mpsc::channel();
        runtime.spawn_blocking(move || {
            started.send(()).unwrap();
            ended.send(wait_on(&handle, std::future::pending::<()>()).is_err()).unwrap();
        });
        waiting.recv_timeout(Duration::from_secs(10)).unwrap();
        runtime.shutdown_timeout(Duration::from_secs(10));
        assert_eq!(outcome.recv_timeout(Duration::from_secs(10)), Ok(true), "the wait ended with Stopped");
    }

    #[test]
    fn the_work_s_output_comes_back() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let handle = runtime.handle().clone();
        let output = std::thread::spawn(move || wait_on(&handle, async { 6 * 7 }).unwrap()).join().unwrap();
        assert_eq!(output, 42);
    }
}
