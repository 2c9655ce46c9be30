//! `GET /v1/events?from=HEIGHT:INDEX`: the ledger's events as Server-Sent Events; and
//! `GET /v1/heads`: the height of every new block (see [`heads`]).
//!
//! Each event's SSE id is its cursor `height:index` (index within the block's flattened event
//! list). `from` is the first cursor to deliver (default `1:0`); a client resumes by passing
//! the cursor after the last one it processed ([`Cursor::next`]). Past blocks are read from
//! storage, then the stream follows live blocks; duplicates across that seam are skipped.

use std::convert::Infallible;

use axum::extract::{Query, State};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures::Stream;
use serde::Deserialize;
use sortition_ledger::Event;
use tokio::sync::broadcast::error::RecvError;

use sortition_ledger_api::Cursor;

use crate::error::ApiError;
use crate::sequencer::Handle;

#[derive(Deserialize)]
pub(crate) struct EventsQuery {
    from: Option<String>,
}

fn sse(cursor: Cursor, e: &Event) -> SseEvent {
    SseEvent::default()
        .id(cursor.to_string())
        .json_data(e)
        .unwrap_or_else(|_| SseEvent::default().comment("unencodable"))
}

pub(crate) async fn events(
    State(h): State<Handle>,
    Query(q): Query<EventsQuery>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let from: Cursor = q
        .from
        .as_deref()
        .map(str::parse)
        .transpose()
        .map_err(ApiError::BadRequest)?
        .unwrap_or(Cursor::START);
    let mut live = h.subscribe();
    let stream = async_stream::stream! {
        let mut cur = from;
        let mut need_catch_up = true;
        loop {
            if need_catch_up {
                need_catch_up = false;
                let head = h.with_ledger(|l| l.height());
                let past = h.shared().store.events(cur.height, head).unwrap_or_default();
                for (height, evs) in past {
                    for (i, e) in evs.iter().enumerate() {
                        let c = Cursor { height, index: i as u32 };
                        if c >= cur { yield Ok(sse(c, e)); }
                    }
                    cur = Cursor { height: height + 1, index: 0 };
                }
            }
            match live.recv().await {
                Ok(b) => {
                    if b.height < cur.height { continue; }
                    // Blocks between the cursor and this one were persisted before it was
                    // published: read them (and this one) from storage on the next turn.
                    if b.height > cur.height { need_catch_up = true; continue; }
                    for (i, e) in b.events.iter().enumerate() {
                        let c = Cursor { height: b.height, index: i as u32 };
                        if c >= cur { yield Ok(sse(c, e)); }
                    }
                    cur = Cursor { height: b.height + 1, index: 0 };
                }
                Err(RecvError::Lagged(_)) => need_catch_up = true,
                Err(RecvError::Closed) => break,
            }
        }
    };
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// `GET /v1/heads`: the current height, then the height of each block as it is persisted
/// (empty blocks too), one SSE `data: HEIGHT` each, so that a client waits for a height or
/// re-reads the state once per block instead of polling. A subscriber that falls behind gets
/// the latest height (heights only grow; none is needed twice).
pub(crate) async fn heads(
    State(h): State<Handle>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let mut live = h.subscribe();
    let stream = async_stream::stream! {
        let mut last = h.with_ledger(|l| l.height());
        yield Ok(SseEvent::default().data(last.to_string()));
        loop {
            let height = match live.recv().await {
                Ok(b) => b.height,
                Err(RecvError::Lagged(_)) => h.with_ledger(|l| l.height()),
                Err(RecvError::Closed) => break,
            };
            if height > last {
                last = height;
                yield Ok(SseEvent::default().data(height.to_string()));
            }
        }
    };
    Sse::new(stream).keep_alive(KeepAlive::default())
}
