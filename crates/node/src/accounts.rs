//! Unit accounting per stack: reservations are taken atomically with the ownership, expiry
//! and balance checks, so parallel requests on one stack can never overspend it.
//!
//! A request reserves its worst case (prompt tokens + max new tokens) before it runs; when it
//! finishes, the actual usage is committed with the next receipt sequence number and the rest
//! returns to the stack.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use sortition_types::{ModelId, NodeId, PublicKey, StackId};

/// What the node knows of a stack from the ledger.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StackInfo {
    pub id: StackId,
    pub owner: PublicKey,
    pub node: NodeId,
    pub model: ModelId,
    pub units: u64,
    pub expires_at_ms: u64,
    /// False once claimed, settled or expired on the ledger.
    pub open: bool,
}

/// Why a reservation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReserveError {
    #[error("stack {0} is not held on this node")]
    ForeignStack(StackId),
    #[error("stack {0} is for model {1}, not {2}")]
    WrongModel(StackId, ModelId, ModelId),
    #[error("stack {0} has expired or is closed")]
    Closed(StackId),
    #[error("stack {stack} has {remaining} units left; this request may need {needed}")]
    Exhausted {
        stack: StackId,
        remaining: u64,
        needed: u64,
    },
}

#[derive(Debug, Default)]
struct Account {
    used: u64,
    reserved: u64,
    next_seq: u64,
    /// Closed for claiming ([`StackAccounts::close`]): no new reservation.
    closed: bool,
}

/// The accounts, and a signal that some reservation ended (what a claim waits on).
#[derive(Default)]
struct Ledger {
    accounts: Mutex<HashMap<StackId, Account>>,
    ended: tokio::sync::Notify,
}

impl Ledger {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<StackId, Account>> {
        self.accounts.lock().unwrap_or_else(|e| e.into_inner())
    }
}

type Book = Arc<Ledger>;

/// A granted reservation. It ends through [`StackAccounts::charge`] or
/// [`StackAccounts::settle`]; one that is dropped without either (an early return, a failed
/// or cancelled task, a panic) goes back to its stack uncharged, so units are never left
/// reserved by a request that is gone.
pub struct Reservation {
    pub stack: StackId,
    pub units: u64,
    /// The book it was taken from; `None` once charged or settled.
    book: Option<Book>,
}

impl std::fmt::Debug for Reservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reservation")
            .field("stack", &self.stack)
            .field("units", &self.units)
            .field("open", &self.book.is_some())
            .finish()
    }
}

impl Reservation {
    /// Ends the reservation in `book`: its units leave the reserved count, and `f` records
    /// what it used.
    fn end<T>(mut self, f: impl FnOnce(&mut Account, u64) -> T) -> T {
        let book = self.book.take().unwrap_or_default();
        let out = {
            let mut g = book.lock();
            let acct = g.entry(self.stack).or_default();
            acct.reserved = acct.reserved.saturating_sub(self.units);
            f(acct, self.units)
        };
        book.ended.notify_waiters();
        out
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(book) = self.book.take() {
            {
                let mut g = book.lock();
                let acct = g.entry(self.stack).or_default();
                acct.reserved = acct.reserved.saturating_sub(self.units);
            }
            book.ended.notify_waiters();
        }
    }
}

/// Reservation book for all stacks this node serves.
#[derive(Default)]
pub struct StackAccounts {
    inner: Book,
}

impl StackAccounts {
    /// Restores a stack's counters (from persisted receipts) after a restart.
    pub fn restore(&self, stack: StackId, used: u64, next_seq: u64) {
        let mut g = self.inner.lock();
        g.insert(
            stack,
            Account {
                used,
                reserved: 0,
                next_seq,
                closed: false,
            },
        );
    }

    /// Reserves `needed` units if the stack is this node's, open, unexpired, for `model`, and
    /// has them left. All checks and the reservation happen under one lock.
    pub fn reserve(
        &self,
        info: &StackInfo,
        me: NodeId,
        model: &ModelId,
        needed: u64,
        now_ms: u64,
    ) -> Result<Reservation, ReserveError> {
        if info.node != me {
            return Err(ReserveError::ForeignStack(info.id));
        }
        if &info.model != model {
            return Err(ReserveError::WrongModel(
                info.id,
                info.model.clone(),
                model.clone(),
            ));
        }
        if !info.open || now_ms >= info.expires_at_ms {
            return Err(ReserveError::Closed(info.id));
        }
        let mut g = self.inner.lock();
        let acct = g.entry(info.id).or_default();
        if acct.closed {
            return Err(ReserveError::Closed(info.id));
        }
        let remaining = info
            .units
            .saturating_sub(acct.used)
            .saturating_sub(acct.reserved);
        if needed > remaining {
            return Err(ReserveError::Exhausted {
                stack: info.id,
                remaining,
                needed,
            });
        }
        acct.reserved += needed;
        Ok(Reservation {
            stack: info.id,
            units: needed,
            book: Some(self.inner.clone()),
        })
    }

    /// Ends a reservation whose receipt is persisted: `used` units are charged (at most the
    /// reservation) and the rest goes back to the stack. (The receipt's sequence number is
    /// allocated by the store, in the write that persists it.)
    pub fn charge(&self, r: Reservation, used: u64) {
        r.end(|acct, units| acct.used += used.min(units));
    }

    /// Ends a reservation: `used` units are charged (at most the reservation) and a running
    /// count of the stack's charges is returned; the rest goes back to the stack. `used == 0`
    /// with `charge == false` releases without a receipt.
    pub fn settle(&self, r: Reservation, used: u64, charge: bool) -> Option<u64> {
        r.end(|acct, units| {
            if !charge {
                return None;
            }
            acct.used += used.min(units);
            let seq = acct.next_seq;
            acct.next_seq += 1;
            Some(seq)
        })
    }

    /// Closes a stack to new reservations, under the lock the reservations take: once this
    /// returns, every reservation on it is either counted in [`StackAccounts::in_flight`] or
    /// refused, so a claim that waits for none in flight holds every receipt. (A request
    /// that authenticated on an open stack just before may still hold that view of it; the
    /// view alone no longer lets it reserve.)
    pub fn close(&self, stack: StackId) {
        let mut g = self.inner.lock();
        g.entry(stack).or_default().closed = true;
    }

    /// Units charged so far on a stack.
    pub fn used(&self, stack: StackId) -> u64 {
        let g = self.inner.lock();
        g.get(&stack).map(|a| a.used).unwrap_or(0)
    }

    /// Units still reserved by requests in flight on a stack.
    pub fn in_flight(&self, stack: StackId) -> u64 {
        let g = self.inner.lock();
        g.get(&stack).map(|a| a.reserved).unwrap_or(0)
    }

    /// Waits, at most `limit`, until no request is in flight on `stack` (woken by each
    /// reservation's end, not by polling); whether it got there. Meant for a stack closed with
    /// [`StackAccounts::close`], which no new reservation can join.
    pub async fn drained(&self, stack: StackId, limit: std::time::Duration) -> bool {
        let wait = async {
            loop {
                // Registered before the check, so an end between the two is not missed.
                let ended = self.inner.ended.notified();
                tokio::pin!(ended);
                ended.as_mut().enable();
                if self.in_flight(stack) == 0 {
                    return;
                }
                ended.await;
            }
        };
        tokio::time::timeout(limit, wait).await.is_ok()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use sortition_types::Keypair;
    use std::time::Duration;

    fn info(units: u64) -> StackInfo {
        StackInfo {
            id: StackId(1),
            owner: Keypair::from_seed(b"o").public(),
            node: NodeId(7),
            model: ModelId::new("m"),
            units,
            expires_at_ms: 1_000,
            open: true,
        }
    }

    #[test]
    fn parallel_reservations_never_overspend() {
        let book = Arc::new(StackAccounts::default());
        let inf = info(1_000);
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let (book, inf) = (book.clone(), inf.clone());
                std::thread::spawn(move || {
                    let mut charged = 0;
                    for _ in 0..100 {
                        if let Ok(r) = book.reserve(&inf, NodeId(7), &ModelId::new("m"), 7, 0) {
                            book.settle(r, 5, true);
                            charged += 5;
                        }
                    }
                    charged
                })
            })
            .collect();
        let total: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(total, book.used(StackId(1)));
        assert!((1_000 - 7..=1_000).contains(&total), "charged {total}");
        assert_eq!(book.in_flight(StackId(1)), 0);
    }

    #[test]
    fn refusals_are_typed() {
        let book = StackAccounts::default();
        let inf = info(10);
        let m = ModelId::new("m");
        assert!(matches!(
            book.reserve(&inf, NodeId(8), &m, 1, 0),
            Err(ReserveError::ForeignStack(_))
        ));
        assert!(matches!(
            book.reserve(&inf, NodeId(7), &ModelId::new("x"), 1, 0),
            Err(ReserveError::WrongModel(..))
        ));
        assert!(matches!(
            book.reserve(&inf, NodeId(7), &m, 1, 1_000),
            Err(ReserveError::Closed(_))
        ));
        assert!(matches!(
            book.reserve(&inf, NodeId(7), &m, 11, 0),
            Err(ReserveError::Exhausted { .. })
        ));
        let r = book.reserve(&inf, NodeId(7), &m, 10, 0).unwrap();
        assert!(matches!(
            book.reserve(&inf, NodeId(7), &m, 1, 0),
            Err(ReserveError::Exhausted { .. })
        ));
        assert_eq!(book.settle(r, 4, true), Some(0));
        assert!(book.reserve(&inf, NodeId(7), &m, 6, 0).is_ok());
    }

    /// A request holding a view of the stack from before the claim closed it (still open)
    /// is refused once the book closed it; one reserved before the close stays in flight
    /// (the claim waits for it) and settles with its receipt number.
    #[test]
    fn a_closed_stack_refuses_reservations_from_an_earlier_open_view() {
        let book = StackAccounts::default();
        let (inf, m) = (info(100), ModelId::new("m"));
        let before = book.reserve(&inf, NodeId(7), &m, 10, 0).unwrap();
        book.close(StackId(1));
        assert!(inf.open, "the request's view is stale");
        assert!(matches!(
            book.reserve(&inf, NodeId(7), &m, 1, 0),
            Err(ReserveError::Closed(_))
        ));
        assert_eq!(book.in_flight(StackId(1)), 10);
        assert_eq!(book.settle(before, 3, true), Some(0));
        assert_eq!(book.in_flight(StackId(1)), 0);
        assert_eq!(book.used(StackId(1)), 3);
    }

    /// A claim waits for the requests in flight on a closed stack: it wakes when the last one
    /// ends, and gives up at its limit while one is still running.
    #[tokio::test(start_paused = true)]
    async fn a_closed_stack_drains_when_its_last_request_ends() {
        let book = Arc::new(StackAccounts::default());
        let (inf, m) = (info(100), ModelId::new("m"));
        assert!(
            book.drained(StackId(1), Duration::ZERO).await,
            "nothing in flight"
        );
        let a = book.reserve(&inf, NodeId(7), &m, 10, 0).unwrap();
        let b = book.reserve(&inf, NodeId(7), &m, 10, 0).unwrap();
        book.close(StackId(1));
        let started = tokio::time::Instant::now();
        let ends = {
            let book = book.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(3)).await;
                book.settle(a, 4, true);
                tokio::time::sleep(Duration::from_secs(2)).await;
                drop(b);
            })
        };
        assert!(book.drained(StackId(1), Duration::from_secs(60)).await);
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(5),
            "woken by the last end"
        );
        ends.await.unwrap();
        assert_eq!(book.used(StackId(1)), 4);
        // A request that does not end: the wait gives up at its limit.
        let stuck = book.reserve(&info(100), NodeId(7), &m, 1, 0);
        assert!(stuck.is_err(), "the stack is closed");
        let other = StackInfo {
            id: StackId(2),
            ..info(100)
        };
        let _held = book.reserve(&other, NodeId(7), &m, 1, 0).unwrap();
        let started = tokio::time::Instant::now();
        assert!(!book.drained(StackId(2), Duration::from_secs(60)).await);
        assert_eq!(started.elapsed(), Duration::from_secs(60));
    }

    /// A reservation dropped without being charged or settled (a failed task, an early
    /// return) goes back to its stack uncharged; one that was charged is not given back twice.
    #[test]
    fn a_dropped_reservation_goes_back_uncharged() {
        let book = StackAccounts::default();
        let (inf, m) = (info(100), ModelId::new("m"));
        let a = book.reserve(&inf, NodeId(7), &m, 30, 0).unwrap();
        let b = book.reserve(&inf, NodeId(7), &m, 20, 0).unwrap();
        assert_eq!(book.in_flight(StackId(1)), 50);
        let task = std::thread::spawn(move || {
            let _held = a;
            panic!("the request's task fails");
        });
        assert!(task.join().is_err());
        assert_eq!(book.in_flight(StackId(1)), 20);
        book.charge(b, 5);
        assert_eq!((book.in_flight(StackId(1)), book.used(StackId(1))), (0, 5));
        // All 95 remaining units can be reserved again.
        assert!(book.reserve(&inf, NodeId(7), &m, 95, 0).is_ok());
    }
}
