//! The ledger's height as something to wait on: [`ChainHead`] is kept current by one task
//! following `GET /v1/heads` (reconnecting on any validator the client knows), and duties wait
//! for a height ([`ChainHead::reached`]) or for the next block ([`ChainHead::next_block`])
//! instead of asking the ledger for its status every few hundred milliseconds. The ledger's
//! facts only change in blocks, so re-reading them once per block misses nothing.
//!
//! Time is injected: a test drives a head by hand ([`ChainHead::manual`]) and a duty under
//! test sees exactly the blocks it is given.

use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::watch;

use crate::LedgerClient;
use crate::follower::RECONNECT_DELAY;

/// The latest height this process has seen the ledger reach (0 until the first is heard).
#[derive(Clone, Debug)]
pub struct ChainHead {
    rx: watch::Receiver<u64>,
}

/// What drives a [`ChainHead`] by hand (tests).
#[derive(Debug)]
pub struct HeadDriver(watch::Sender<u64>);

impl HeadDriver {
    /// The ledger reached `height` (a lower one than before is ignored).
    pub fn advance_to(&self, height: u64) {
        self.0.send_if_modified(|h| {
            let newer = height > *h;
            if newer {
                *h = height;
            }
            newer
        });
    }
}

impl ChainHead {
    /// A head that follows `client`'s ledger until `shutdown` completes. The returned future
    /// is the follower: spawn it.
    pub fn follow(
        client: LedgerClient,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> (ChainHead, impl Future<Output = ()> + Send + 'static) {
        let (tx, rx) = watch::channel(0);
        let driver = HeadDriver(tx);
        let task = async move {
            tokio::pin!(shutdown);
            loop {
                let heads = tokio::select! {
                    _ = &mut shutdown => return,
                    h = client.heads() => h,
                };
                match heads {
                    Ok(heads) => {
                        tokio::pin!(heads);
                        loop {
                            let next = tokio::select! {
                                _ = &mut shutdown => return,
                                n = heads.next() => n,
                            };
                            match next {
                                Some(Ok(h)) => driver.advance_to(h),
                                Some(Err(e)) => {
                                    tracing::warn!(error = %e, "ledger heads broke; reconnecting");
                                    break;
                                }
                                None => break,
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "ledger heads unavailable; retrying"),
                }
                tokio::select! {
                    _ = &mut shutdown => return,
                    _ = tokio::time::sleep(RECONNECT_DELAY) => {}
                }
            }
        };
        (ChainHead { rx }, task)
    }

    /// A head at `start` that moves only when its driver says so.
    pub fn manual(start: u64) -> (ChainHead, HeadDriver) {
        let (tx, rx) = watch::channel(start);
        (ChainHead { rx }, HeadDriver(tx))
    }

    /// The latest height seen.
    pub fn now(&self) -> u64 {
        *self.rx.borrow()
    }

    /// Resolves once the ledger has reached `height` (never, if the head's follower stopped
    /// below it: bound the wait where that matters).
    pub async fn reached(&self, height: u64) {
        let mut rx = self.rx.clone();
        if rx.wait_for(|h| *h >= height).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Resolves at the next block after the one seen now, or after `at_most` (so that a caller
    /// also hears of what arrives outside blocks, e.g. a delivery), whichever comes first.
    pub async fn next_block(&self, at_most: Duration) {
        let now = self.now();
        let _ = tokio::time::timeout(at_most, self.reached(now + 1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn waits_end_at_the_height_they_wait_for() {
        let (head, drive) = ChainHead::manual(3);
        head.reached(3).await;
        let waiting = tokio::spawn({
            let head = head.clone();
            async move { head.reached(5).await }
        });
        drive.advance_to(4);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "height 4 ended a wait for 5");
        drive.advance_to(2);
        assert_eq!(head.now(), 4, "heights only grow");
        drive.advance_to(5);
        waiting.await.expect("the wait ends at 5");
    }

    #[tokio::test(start_paused = true)]
    async fn next_block_is_bounded_by_time() {
        let (head, drive) = ChainHead::manual(7);
        let start = tokio::time::Instant::now();
        head.next_block(Duration::from_secs(2)).await;
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(2),
            "no block: the bound ends it"
        );
        let next = tokio::spawn({
            let head = head.clone();
            async move { head.next_block(Duration::from_secs(60)).await }
        });
        tokio::task::yield_now().await;
        drive.advance_to(8);
        next.await.expect("a block ends it");
        assert!(start.elapsed() < Duration::from_secs(3));
    }
}
