//! Small parsers and helpers shared by the subcommands: amounts, config files, URLs, and the
//! OpenAI error shape.
//!
//! All TOML reading sits here; environment variables are read by clap (`env = "…"` on each
//! flag), so precedence is always: flag, then environment, then file, then default.

use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::de::DeserializeOwned;
use sortition_types::Amount;
use sortition_types::amount::MICRO_PER_UNIT;

/// Parses a decimal amount of whole units (`10`, `2.5`, `0.000001`) into exact micro-units,
/// without floats. More than six decimals is an error rather than a silent rounding.
pub fn parse_units(s: &str) -> Result<Amount, String> {
    let s = s.trim();
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    if whole.is_empty() && frac.is_empty() {
        return Err("empty amount".into());
    }
    let digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || !digits(frac) {
        return Err(format!(
            "{s:?} is not a decimal amount of units (e.g. 10 or 2.5)"
        ));
    }
    if frac.len() > 6 {
        return Err(format!(
            "{s:?} has more than 6 decimals (1 unit = 1000000 micro-units)"
        ));
    }
    let w: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|e| format!("{s:?}: {e}"))?
    };
    let f: u64 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<6}")
            .parse()
            .map_err(|e| format!("{s:?}: {e}"))?
    };
    w.checked_mul(MICRO_PER_UNIT)
        .and_then(|m| m.checked_add(f))
        .map(Amount)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// Parses an amount given in micro-units (an integer).
pub fn parse_micro(s: &str) -> Result<Amount, String> {
    s.trim()
        .parse::<u64>()
        .map(Amount)
        .map_err(|e| format!("{s:?} is not an integer of micro-units: {e}"))
}

/// Reads a TOML config file into `T` (unknown fields are the struct's business).
pub fn read_toml<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing config {}", path.display()))
}

/// Checks that a URL is an `http(s)://` base URL and strips the trailing slash.
pub fn base_url(what: &str, url: &str) -> Result<String> {
    let u = url.trim().trim_end_matches('/');
    if !(u.starts_with("http://") || u.starts_with("https://")) || u.len() <= "https://".len() {
        bail!("{what} URL {url:?} must start with http:// or https://");
    }
    Ok(u.to_string())
}

/// Turns an OpenAI-shaped error body (`{"error": {"message", "type", "code"}}`) into one line.
pub fn describe_api_error(status: u16, body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    describe_error_value(&v["error"])
        .map(|e| format!("HTTP {status} {e}"))
        .unwrap_or_else(|| format!("HTTP {status}: {}", body.trim()))
}

/// `(type, code): message` for an OpenAI `error` object, if it has a message.
pub fn describe_error_value(e: &serde_json::Value) -> Option<String> {
    let message = e["message"].as_str()?;
    let kind = e["type"].as_str().unwrap_or("error");
    let code = e["code"]
        .as_str()
        .map(|c| format!(", {c}"))
        .unwrap_or_default();
    Some(format!("({kind}{code}): {message}"))
}

/// A future that resolves on ctrl-c (SIGINT) or, on Unix, SIGTERM: how services are asked
/// to stop. The handlers are installed when this is called, not when the future is first
/// polled, so call it before announcing that the service is up: a supervisor that sends
/// SIGTERM as soon as it reads the announcement must get a clean stop, not the default
/// action that kills the process.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        async move {
            match (term, int) {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                }
                // No handler could be installed: ctrl-c through the portable path.
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn units_parse_exactly() {
        assert_eq!(parse_units("10"), Ok(Amount(10_000_000)));
        assert_eq!(parse_units("2.5"), Ok(Amount(2_500_000)));
        assert_eq!(parse_units("0.000001"), Ok(Amount(1)));
        assert_eq!(parse_units(".5"), Ok(Amount(500_000)));
        assert!(parse_units("1.0000001").is_err());
        assert!(parse_units("-1").is_err());
        assert!(parse_units("1e3").is_err());
        assert!(parse_units("").is_err());
        assert!(parse_units("99999999999999999999").is_err());
    }

    #[test]
    fn urls_are_checked() {
        assert_eq!(
            base_url("x", "http://a:1/").ok().as_deref(),
            Some("http://a:1")
        );
        assert!(base_url("x", "a:1").is_err());
    }

    #[test]
    fn api_errors_read_well() {
        let s = describe_api_error(
            401,
            r#"{"error":{"message":"bad key","type":"authentication_error","code":"invalid_api_key"}}"#,
        );
        assert_eq!(
            s,
            "HTTP 401 (authentication_error, invalid_api_key): bad key"
        );
        assert_eq!(describe_api_error(502, "oops"), "HTTP 502: oops");
    }
}
