//! The thread pool the products split their work over (a fixed number of threads; the
//! results do not depend on it).

use rayon::prelude::*;

use crate::error::{KernelError, Result};
use crate::isa::Kernel;

/// Runs products on a fixed number of threads.
pub struct Pool {
    /// `None` for one thread: products run on the caller's thread.
    pool: Option<rayon::ThreadPool>,
    kernel: Kernel,
}

impl Pool {
    pub fn new(threads: usize, kernel: Kernel) -> Result<Pool> {
        let pool = if threads > 1 {
            Some(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .thread_name(|i| format!("sortition-q8-{i}"))
                    .build()
                    .map_err(|e| KernelError::Internal(format!("thread pool: {e}")))?,
            )
        } else {
            None
        };
        Ok(Pool { pool, kernel })
    }

    /// The dot-routine implementation the products use.
    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    pub fn threads(&self) -> usize {
        self.pool.as_ref().map_or(1, |p| p.current_num_threads())
    }

    /// Runs `f` on one of the pool's threads, so that the parallel products and loops inside
    /// it split their work by stealing between threads already awake instead of each waking
    /// the pool from outside (a forward pass runs ~150 of them per token).
    pub fn install<R: Send, F: FnOnce() -> R + Send>(&self, f: F) -> R {
        match &self.pool {
            Some(p) => p.install(f),
            None => f(),
        }
    }

    /// Runs `f` on every item, in parallel when the pool has threads.
    pub fn for_each<T: Send, F: Fn(T) + Sync + Send>(&self, items: Vec<T>, f: F) {
        match &self.pool {
            Some(p) => p.install(|| items.into_par_iter().for_each(f)),
            None => items.into_iter().for_each(f),
        }
    }
}
