//! Bearer-token guard of every role's metrics port (`--metrics-endpoint-auth` with
//! `--metrics-token-file`): `/metrics` and `/debug/*` answer 401 unless the request carries
//! `Authorization: Bearer <token>` with the file's token.
//!
//! The file is read at each guarded request, so a rotated token (a Secret volume updated in
//! place) applies at once without a restart; an unreadable or empty file refuses every request
//! (fail closed) and logs why. It does not do upstream's Kubernetes TokenReview /
//! SubjectAccessReview: that needs API-server credentials in every role, and Switchyard's roles
//! also run outside Kubernetes. Off by default (see docs/operations.md).

use std::path::PathBuf;

use axum::http::{HeaderMap, StatusCode, header};
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum MetricsAuthError {
    #[error("--metrics-endpoint-auth needs --metrics-token-file (the bearer token clients must send)")]
    NoTokenFile,
}

/// How a metrics port checks its callers; the default lets everyone in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricsAuth {
    /// `None`: no check.
    token_file: Option<PathBuf>,
}

impl MetricsAuth {
    /// No check (the default).
    pub fn disabled() -> Self {
        MetricsAuth::default()
    }

    /// Requests must carry the bearer token held in `path` (re-read at each request).
    pub fn bearer_token_file(path: impl Into<PathBuf>) -> Self {
        MetricsAuth { token_file: Some(path.into()) }
    }

    /// From the flags: `enabled` without a token file is a configuration error.
    pub fn from_flags(enabled: bool, token_file: Option<PathBuf>) -> Result<Self, MetricsAuthError> {
        match (enabled, token_file) {
            (false, _) => Ok(MetricsAuth::disabled()),
            (true, None) => Err(MetricsAuthError::NoTokenFile),
            (true, Some(path)) => Ok(MetricsAuth::bearer_token_file(path)),
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.token_file.is_some()
    }

    /// `Ok` when the request may proceed, else the status to answer.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), StatusCode> {
        let Some(path) = &self.token_file else { return Ok(()) };
        let expected = match std::fs::read_to_string(path) {
            Ok(t) if !t.trim().is_empty() => t,
            Ok(_) => {
                tracing::warn!(file = %path.display(), "metrics token file is empty: refusing metrics requests");
                return Err(StatusCode::UNAUTHORIZED);
            }
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot read the metrics token file: refusing metrics requests");
                return Err(StatusCode::UNAUTHORIZED);
            }
        };
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        match given {
            Some(token) if constant_time_eq(token.as_bytes(), expected.trim().as_bytes()) => Ok(()),
            _ => Err(StatusCode::UNAUTHORIZED),
        }
    }
}

/// Compares without stopping at the first differing byte (the time does not tell how much of a
/// guess was right).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bearer(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, format!("Bearer {token}").parse().expect("header"));
        h
    }

    #[test]
    fn token_is_checked_and_reread_at_each_request() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("token");
        std::fs::write(&file, "s3cret\n").expect("write");
        let auth = MetricsAuth::from_flags(true, Some(file.clone())).expect("flags");
        assert_eq!(auth.check(&HeaderMap::new()), Err(StatusCode::UNAUTHORIZED));
        assert_eq!(auth.check(&bearer("wrong")), Err(StatusCode::UNAUTHORIZED));
        assert_eq!(auth.check(&bearer("s3cret")), Ok(()));
        std::fs::write(&file, "rotated").expect("write");
        assert_eq!(auth.check(&bearer("s3cret")), Err(StatusCode::UNAUTHORIZED));
        assert_eq!(auth.check(&bearer("rotated")), Ok(()));
        std::fs::remove_file(&file).expect("rm");
        assert_eq!(auth.check(&bearer("rotated")), Err(StatusCode::UNAUTHORIZED), "fails closed");
        std::fs::write(&file, "  \n").expect("write");
        assert_eq!(auth.check(&bearer("")), Err(StatusCode::UNAUTHORIZED), "an empty token never matches");
    }

    #[test]
    fn flags() {
        assert_eq!(MetricsAuth::from_flags(true, None), Err(MetricsAuthError::NoTokenFile));
        assert!(!MetricsAuth::from_flags(false, Some("x".into())).expect("off").is_enabled());
        assert_eq!(MetricsAuth::disabled().check(&HeaderMap::new()), Ok(()));
    }
}
