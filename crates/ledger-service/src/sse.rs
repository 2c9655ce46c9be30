//! `GET /v1/events?from=HEIGHT:INDEX`: the ledger's events as Server-Sent Events.
//!
//! Each event's SSE id is its cursor `height:index` (index within the block's flattened event
//! list). `from` is the first cursor to deliver (default `1:0`); a client resumes by passing
//! the cursor after the last one it processed ([`Cursor::next`]). Past blocks are read from
//! storage, then the stream follows live blocks; duplicates across that seam are skipped.

use std::convert::Infallible;
use std::fmt;

use axum::extract::{Query, State};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures::Stream;
use serde::Deserialize;
use sortition_ledger::Event;
use tokio::sync::broadcast::error::RecvError;

use crate::error::ApiError;
use crate::sequencer::Handle;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor {
    pub height: u64,
    pub index: u32,
}

impl Cursor {
    pub const START: Cursor = Cursor {
        height: 1,
        index: 0,
    };
    /// The cursor right after this one.
    pub fn next(self) -> Cursor {
        Cursor {
            height: self.height,
            index: self.index + 1,
        }
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.height, self.index)
    }
}

impl std::str::FromStr for Cursor {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (h, i) = s
            .split_once(':')
            .ok_or_else(|| format!("cursor {s:?} is not HEIGHT:INDEX"))?;
        Ok(Cursor {
            height: h.parse().map_err(|_| "bad height".to_string())?,
            index: i.parse().map_err(|_| "bad index".to_string())?,
        })
    }
}

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
