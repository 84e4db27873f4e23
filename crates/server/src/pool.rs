//! The compute pool: FHE work runs on its own threads, apart from the async runtime
//! that serves HTTP, behind a bounded queue. A full queue refuses new work at once
//! (the caller answers 503) instead of growing memory.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

type Job = Box<dyn FnOnce() + Send>;

pub struct Pool {
    sender: Mutex<Option<SyncSender<Job>>>,
    workers: Mutex<Vec<JoinHandle<()>>>,
    /// Jobs accepted and not finished (queued or running).
    pending: Arc<AtomicUsize>,
}

/// The queue is full.
#[derive(Debug)]
pub struct Busy;

/// A job panicked (a bug); its caller answers 500.
#[derive(Debug)]
pub struct Panicked;

impl Pool {
    /// `workers` threads; at most `queue` jobs wait beyond those running. Fails when the
    /// OS cannot start a thread.
    pub fn new(workers: usize, queue: usize) -> std::io::Result<Self> {
        let (sender, receiver) = sync_channel::<Job>(queue);
        let receiver = Arc::new(Mutex::new(receiver));
        let workers = (0..workers.max(1))
            .map(|i| {
                let rx: Arc<Mutex<Receiver<Job>>> = receiver.clone();
                std::thread::Builder::new()
                    .name(format!("fhec-compute-{i}"))
                    .spawn(move || loop {
                        // the lock is held only while waiting for the next job
                        let job = match rx.lock().unwrap_or_else(|e| e.into_inner()).recv() {
                            Ok(job) => job,
                            Err(_) => return, // the pool was closed and drained
                        };
                        job();
                    })
            })
            .collect::<std::io::Result<_>>()?;
        Ok(Pool {
            sender: Mutex::new(Some(sender)),
            workers: Mutex::new(workers),
            pending: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// Jobs accepted and not yet finished.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    /// Queues `f`; its result arrives on the returned channel.
    pub fn submit<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<tokio::sync::oneshot::Receiver<Result<T, Panicked>>, Busy> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let pending = self.pending.clone();
        let job: Job = Box::new(move || {
            let out = std::panic::catch_unwind(AssertUnwindSafe(f)).map_err(|_| Panicked);
            pending.fetch_sub(1, Ordering::Relaxed);
            // the requester may have gone away; the result is then dropped
            let _ = tx.send(out);
        });
        let sender = self.sender.lock().unwrap_or_else(|e| e.into_inner());
        let Some(sender) = sender.as_ref() else {
            return Err(Busy);
        };
        self.pending.fetch_add(1, Ordering::Relaxed);
        match sender.try_send(job) {
            Ok(()) => Ok(rx),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.pending.fetch_sub(1, Ordering::Relaxed);
                Err(Busy)
            }
        }
    }

    /// Stops accepting work, lets the queued and running jobs finish, and joins the
    /// threads.
    pub fn close(&self) {
        self.sender.lock().unwrap_or_else(|e| e.into_inner()).take();
        let workers = std::mem::take(&mut *self.workers.lock().unwrap_or_else(|e| e.into_inner()));
        for w in workers {
            let _ = w.join();
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_refuses_work_and_every_accepted_job_finishes() {
        let pool = Pool::new(1, 1).unwrap();
        let (gate_tx, gate_rx) = std::sync::mpsc::channel::<()>();
        let first = pool.submit(move || gate_rx.recv().is_ok()).unwrap();
        // the worker holds the first job; one more fits in the queue, the next does not
        std::thread::sleep(std::time::Duration::from_millis(50));
        let second = pool.submit(|| 2).unwrap();
        assert!(pool.submit(|| 3).is_err(), "a full queue refuses");
        gate_tx.send(()).unwrap();
        assert!(first.blocking_recv().unwrap().unwrap());
        assert_eq!(second.blocking_recv().unwrap().unwrap(), 2);
        assert_eq!(pool.pending(), 0);
        let panicking = pool.submit(|| -> u8 { panic!("a bug") }).unwrap();
        assert!(
            panicking.blocking_recv().unwrap().is_err(),
            "a panic is reported"
        );
        assert_eq!(
            pool.submit(|| 4).unwrap().blocking_recv().unwrap().unwrap(),
            4
        );
        pool.close();
        assert!(pool.submit(|| 5).is_err(), "a closed pool refuses");
    }
}
