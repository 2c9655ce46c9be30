//! Relaying a node's stream to the client: an SSE response fed by a task that owns the
//! stream (so it finishes, and bills, even if the client leaves), and the end of a stream that
//! stopped before the node's receipt.

use std::convert::Infallible;

use axum::response::sse::{Event, KeepAlive, Sse};
use sortition_api::{ApiError, ErrorKind};
use tokio::sync::mpsc;

use crate::router::Outcome;
use crate::state::GatewayState;
use crate::store::UsageStatus;

/// An SSE response fed by a task: `drive` gets the sender of the events' data and runs on its
/// own, so it finishes (and bills) even if the client leaves.
pub(crate) fn channel_sse<F>(
    drive: impl FnOnce(mpsc::Sender<String>) -> F,
) -> Sse<impl futures::Stream<Item = Result<Event, Infallible>>>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, mut rx) = mpsc::channel::<String>(64);
    tokio::spawn(drive(tx));
    let out = async_stream::stream! {
        while let Some(data) = rx.recv().await {
            yield Ok(Event::default().data(data));
        }
    };
    Sse::new(out).keep_alive(KeepAlive::default())
}

/// A stream that ended before the node's receipt (the node failed or the client left): the
/// router hears of it, a client still there gets an error event and `[DONE]`, and the usage
/// status to record is returned.
pub(crate) async fn end_interrupted(
    g: &GatewayState,
    node: sortition_types::NodeId,
    tx: &mpsc::Sender<String>,
    client_gone: bool,
    message: &str,
) -> UsageStatus {
    if client_gone {
        g.finish(node, Outcome::Cancelled).await;
        return UsageStatus::Cancelled;
    }
    g.finish(node, Outcome::Failure).await;
    let err = ApiError::new(ErrorKind::BadGateway, "stream_interrupted", message);
    let _ = tx
        .send(serde_json::to_string(&err.body()).unwrap_or_default())
        .await;
    let _ = tx.send("[DONE]".into()).await;
    UsageStatus::Failed
}
