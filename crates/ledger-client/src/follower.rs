//! One way to follow the ledger's events: [`follow`] reads the stream from a stored cursor,
//! hands each event to an [`EventHandler`], stores the cursor after it, and reconnects (from
//! the stored cursor, on any validator the client knows) when the stream breaks, until its
//! shutdown future completes.
//!
//! Where the cursor lives is the holder's choice ([`CursorStore`]): a node keeps it in its
//! database, a gateway in a file, a process that needs no resume in memory ([`MemoryCursor`]).
//! An event is handled at least once: a crash between handling it and storing the cursor
//! hands it again on restart, so handlers are idempotent.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use sortition_ledger::Event;
use sortition_ledger_api::Cursor;

use crate::LedgerClient;

/// How long [`follow`] waits before reconnecting after the stream could not be opened.
pub const RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// Where a follower keeps the cursor of the next event it has to handle.
pub trait CursorStore: Send {
    /// The next event to handle, or `None` when nothing was stored yet.
    fn load(&self) -> Option<Cursor>;
    /// Records that every event before `next` was handled. An error is logged and following
    /// goes on: the events after the last stored cursor are handled again after a restart.
    fn save(&mut self, next: Cursor) -> Result<(), String>;
}

/// A cursor kept in memory (shared by clones), for followers that start fresh each run.
#[derive(Clone, Debug, Default)]
pub struct MemoryCursor(Arc<Mutex<Option<Cursor>>>);

impl MemoryCursor {
    pub fn starting_at(from: Cursor) -> Self {
        MemoryCursor(Arc::new(Mutex::new(Some(from))))
    }
}

impl CursorStore for MemoryCursor {
    fn load(&self) -> Option<Cursor> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn save(&mut self, next: Cursor) -> Result<(), String> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(next);
        Ok(())
    }
}

/// What a follower does with the events.
pub trait EventHandler: Send {
    /// Called each time the stream is (re)opened, before its first event: the place to catch
    /// up with what may have been missed while it was down.
    fn connected(&mut self, _client: &LedgerClient) -> impl Future<Output = ()> + Send {
        async {}
    }
    /// Handles one event; `at` is its cursor.
    fn handle(
        &mut self,
        client: &LedgerClient,
        at: Cursor,
        event: Event,
    ) -> impl Future<Output = ()> + Send;
}

/// Follows the events from `store`'s cursor (or the first event) until `shutdown` completes;
/// `name` labels the log lines.
pub async fn follow<S: CursorStore, H: EventHandler>(
    name: &str,
    client: LedgerClient,
    mut store: S,
    mut handler: H,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let from = store.load().unwrap_or(Cursor::START);
        let stream = tokio::select! {
            _ = &mut shutdown => return,
            s = client.events(from) => s,
        };
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(follower = name, error = %e, "ledger events unavailable; retrying");
                tokio::select! {
                    _ = &mut shutdown => return,
                    _ = tokio::time::sleep(RECONNECT_DELAY) => continue,
                }
            }
        };
        tokio::select! {
            _ = &mut shutdown => return,
            _ = handler.connected(&client) => {}
        }
        tokio::pin!(stream);
        loop {
            let item = tokio::select! {
                _ = &mut shutdown => return,
                i = stream.next() => i,
            };
            match item {
                Some(Ok((at, event))) => {
                    handler.handle(&client, at, event).await;
                    if let Err(e) = store.save(at.next()) {
                        tracing::error!(follower = name, error = %e, "could not store the event cursor");
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(follower = name, error = %e, "event stream broke; reconnecting");
                    break;
                }
                None => break,
            }
        }
    }
}
