//! Relaying a node's answer to the client: waiting for a stream's first event (a node that
//! fails before it is failed over), relaying the stream through a task that owns it (so it
//! finishes, and bills, even if the client leaves) while checking the receipt on its last
//! event, the end of a stream that stopped before the receipt, and refusing an answer whose
//! receipt does not check out.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Bytes;
use axum::response::sse::{Event, KeepAlive, Sse};
use eventsource_stream::Eventsource;
use futures::StreamExt;
use sortition_api::*;
use sortition_types::SignedReceipt;
use tokio::sync::mpsc;

use crate::admission::Admitted;
use crate::answers::NodeAnswer;
use crate::challenge;
use crate::proxy::{self, Dispatched, Lease};
use crate::router::Outcome;
use crate::settle;
use crate::state::GatewayState;
use crate::store::UsageStatus;
use crate::verify;
use crate::verify::check_receipt;

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

/// A stream that ended before the node's receipt (the node failed or the client left): a
/// client still there gets an error event and `[DONE]`; returned are the usage status to
/// record and the node's outcome for the router.
pub(crate) async fn end_interrupted(
    tx: &mpsc::Sender<String>,
    client_gone: bool,
    message: &str,
) -> (UsageStatus, Outcome) {
    if client_gone {
        return (UsageStatus::Cancelled, Outcome::Cancelled);
    }
    let err = ApiError::new(ErrorKind::BadGateway, "stream_interrupted", message);
    let _ = tx
        .send(serde_json::to_string(&err.body()).unwrap_or_default())
        .await;
    let _ = tx.send("[DONE]".into()).await;
    (UsageStatus::Failed, Outcome::Failure)
}

/// Mean time between streamed chunks, from the first and last chunk's arrival, for the
/// router's inter-token latency; `None` with fewer than two chunks.
pub(crate) fn inter_token(
    first: Option<std::time::Duration>,
    last: Option<std::time::Duration>,
    chunks: u64,
) -> Option<std::time::Duration> {
    match (first, last) {
        (Some(f), Some(l)) if chunks >= 2 && l >= f => {
            Some((l - f) / u32::try_from(chunks - 1).unwrap_or(u32::MAX))
        }
        _ => None,
    }
}

pub(crate) type NodeEvents = futures::stream::BoxStream<
    'static,
    Result<eventsource_stream::Event, eventsource_stream::EventStreamError<reqwest::Error>>,
>;

/// A stream whose node has delivered its first event.
pub(crate) struct StartedStream {
    pub(crate) d: Lease,
    /// Every event of the node's stream, the first one included.
    pub(crate) events: NodeEvents,
}

/// Waits for a streamed answer's first event. A node that fails before it (connection lost,
/// stream ended, nothing within the upstream timeout) has delivered nothing: its units are
/// returned, the router hears of the failure, and the node's id comes back for the failover.
pub(crate) async fn first_event(
    g: &GatewayState,
    d: Dispatched,
) -> Result<StartedStream, (sortition_types::NodeId, ApiError)> {
    let Dispatched { lease: d, response } = d;
    let mut events = response.bytes_stream().eventsource();
    let why = match tokio::time::timeout(g.config.upstream_timeout, events.next()).await {
        Ok(Some(Ok(first))) => {
            let events = futures::stream::iter([Ok(first)]).chain(events).boxed();
            return Ok(StartedStream { d, events });
        }
        Ok(Some(Err(e))) => format!("the node's stream broke before its first event: {e}"),
        Ok(None) => "the node's stream ended before its first event".to_string(),
        Err(_) => "the node sent no event in time".to_string(),
    };
    tracing::warn!(node = %d.node.id, %why, "stream failed before delivering anything; trying another node");
    let node = d.node.id;
    Err((node, fail(d, why).await))
}

/// A dispatch that failed after the node's headers: its units are returned, nothing is billed.
pub(crate) async fn fail(d: Lease, msg: String) -> ApiError {
    d.release(Outcome::Failure).await;
    ApiError::new(ErrorKind::BadGateway, "upstream_error", msg)
}

/// Refuses a node's answer whose receipt does not check out. A receipt the node did sign for
/// this request (it only over-reports) will still be claimed by the node, so it is challenged
/// ([`challenge::challenge_over_report`]); one whose answer is not what it commits to is disowned
/// ([`challenge::disown_misdelivered`]).
pub(crate) async fn bad_receipt(
    g: &Arc<GatewayState>,
    d: Lease,
    e: verify::ReceiptError,
    signed: Option<(&Bytes, &SignedReceipt)>,
) -> ApiError {
    tracing::error!(node = %d.node.id, error = %e, "refused a node's receipt");
    if let Some((body, r)) = signed {
        challenge::challenge_over_report(g, &e, r, Some((&d, body))).await;
        challenge::disown_misdelivered(g, &e, r);
    }
    g.metrics.inc("receipts_refused_total", e.code(), 1);
    let node = d.node.id;
    d.release(e.outcome()).await;
    ApiError::new(
        ErrorKind::BadGateway,
        "receipt_invalid",
        format!("node {node}: {e}; the answer was withheld and nothing was billed"),
    )
}

/// Relays a node's SSE stream, checking the receipt in its final event. A driver task owns
/// the upstream so billing happens even if the client disconnects.
pub(crate) fn relay_stream(
    g: Arc<GatewayState>,
    a: Admitted,
    started: StartedStream,
    body: Bytes,
) -> Sse<impl futures::Stream<Item = Result<Event, Infallible>>> {
    crate::relay::channel_sse(|tx| drive_relay(g, a, started, body, tx))
}

pub(crate) async fn drive_relay(
    g: Arc<GatewayState>,
    a: Admitted,
    started: StartedStream,
    body: Bytes,
    tx: mpsc::Sender<String>,
) {
    let StartedStream { d, mut events } = started;
    let mut delivered_chunks: u64 = 0;
    let mut ttft = None;
    let mut last_chunk = None;
    let mut receipt_ok = None;
    let mut client_gone = false;
    let mut answer = sortition_api::delivered::DeliveredText::for_request(&body);
    while let Some(ev) = events.next().await {
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                tracing::warn!(node = %d.node.id, error = %e, "stream from node broke");
                break;
            }
        };
        if ev.data == "[DONE]" {
            break;
        }
        let mut v: serde_json::Value = match serde_json::from_str(&ev.data) {
            Ok(v) => v,
            Err(_) => continue,
        };
        if ttft.is_none() {
            ttft = Some(proxy::elapsed(&d));
        }
        // Everything delivered counts toward what the receipt must cover, the receipt's own
        // event included.
        answer.absorb(&v);
        if v.get("sortition").and_then(|s| s.get("receipt")).is_some() {
            let parsed = v.receipt();
            let checked = match &parsed {
                None => Err(verify::ReceiptError::Missing),
                Some(r) => check_receipt(&d, &body, answer.response_hash(), r).map(|_| r.clone()),
            };
            match checked {
                Ok(r) => {
                    v.mark_verified();
                    receipt_ok = Some(r);
                }
                Err(e) => {
                    let err = bad_receipt(&g, d, e, parsed.as_ref().map(|r| (&body, r))).await;
                    let _ = tx
                        .send(serde_json::to_string(&err.body()).unwrap_or_default())
                        .await;
                    let _ = tx.send("[DONE]".into()).await;
                    return;
                }
            }
        } else {
            delivered_chunks += 1;
            last_chunk = Some(proxy::elapsed(&d));
        }
        if tx.send(v.to_string()).await.is_err() {
            client_gone = true;
            break;
        }
        if receipt_ok.is_some() {
            // The receipt closes the answer: nothing the node sends after it is covered by it,
            // so nothing more is relayed.
            break;
        }
    }
    drop(events);
    match receipt_ok {
        Some(r) => {
            let _ = tx.send("[DONE]".into()).await;
            let answer = answer.finish_reason.map(|finish_reason| settle::Answer {
                text: answer.text,
                finish_reason,
            });
            let served = settle::Served::new(&r, answer.as_ref());
            // Delivered already: settled now, or once the store can (the hold pays meanwhile).
            let bill = settle::receipted_bill(&g, &d, &a.key, &a.model, &body, &served);
            settle::record_delivered(&g, a.hold, vec![bill]).await;
            d.billed(Outcome::Success {
                ttft: ttft.unwrap_or_default(),
                itl: inter_token(ttft, last_chunk, delivered_chunks),
            })
            .await;
        }
        None => {
            // No receipt: the stream ended early (the node failed or the client left). Bill
            // only the chunks actually delivered, one unit each.
            let (status, outcome) = crate::relay::end_interrupted(
                &tx,
                client_gone,
                "the node's stream ended before its receipt",
            )
            .await;
            let bill = d.account(&a.key, &a.model).unreceipted(
                delivered_chunks,
                status,
                sortition_types::sha256(&body),
            );
            settle::record_delivered(&g, a.hold, vec![bill]).await;
            d.billed(outcome).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::inter_token;
    use std::time::Duration;

    #[test]
    fn inter_token_latency_is_the_mean_gap_between_chunks() {
        let ms = Duration::from_millis;
        assert_eq!(inter_token(Some(ms(100)), Some(ms(400)), 4), Some(ms(100)));
        assert_eq!(inter_token(Some(ms(100)), Some(ms(100)), 1), None);
        assert_eq!(inter_token(None, Some(ms(100)), 3), None);
        assert_eq!(inter_token(Some(ms(200)), Some(ms(100)), 3), None);
    }
}
