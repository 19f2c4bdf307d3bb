//! Wall-clock time as the API and the counters show it.

use std::time::SystemTime;

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// RFC 3339, UTC, whole seconds (`2024-01-15T10:30:40Z`): every timestamp the API shows.
pub fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

pub fn now_rfc3339() -> String {
    rfc3339(chrono::Utc::now())
}

/// A Unix-milliseconds instant as RFC 3339; `None` for 0 (never).
pub fn unix_ms_rfc3339(ms: u64) -> Option<String> {
    (ms > 0).then(|| {
        rfc3339(
            chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms as i64).unwrap_or_default(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_whole_seconds_and_never_is_none() {
        assert_eq!(unix_ms_rfc3339(0), None);
        assert_eq!(
            unix_ms_rfc3339(1_705_314_640_999).as_deref(),
            Some("2024-01-15T10:30:40Z")
        );
        assert!(unix_ms() > 1_700_000_000_000);
    }
}
