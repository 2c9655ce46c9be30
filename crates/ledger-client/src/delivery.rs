//! Off-ledger deliveries that ledger events call for (an audited request's payload to each
//! auditor): one policy for every holder. A recipient that is busy (5xx, 429) or unreachable is
//! retried with backoff (200 ms doubling to 2 s) for up to [`PATIENCE`]; any other refusal is
//! final, since sending the same bytes again cannot change it.

use std::time::Duration;

use serde::Serialize;

/// How long a delivery is retried while its recipient is busy or unreachable.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// How a delivery ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    Delivered,
    /// The recipient refused it for good (status and body).
    Refused(String),
    /// Still busy or unreachable when patience ran out (the last error).
    GaveUp(String),
}

/// Posts `body` as JSON to `url` under the policy above.
pub async fn post_with_patience(
    http: &reqwest::Client,
    url: &str,
    body: &impl Serialize,
) -> Delivery {
    let until = tokio::time::Instant::now() + PATIENCE;
    let mut wait = Duration::from_millis(200);
    loop {
        let last = match http.post(url).json(body).send().await {
            Ok(r) if r.status().is_success() => return Delivery::Delivered,
            Ok(r) => {
                let status = r.status();
                let why = format!("{status}: {}", r.text().await.unwrap_or_default());
                if !(status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS) {
                    return Delivery::Refused(why);
                }
                why
            }
            Err(e) => e.to_string(),
        };
        if tokio::time::Instant::now() + wait > until {
            return Delivery::GaveUp(last);
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(2));
    }
}
