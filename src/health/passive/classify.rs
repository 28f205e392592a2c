//! The stock response classifier: which HTTP statuses and gRPC codes are failures.

use std::fmt;

use http::{HeaderMap, Response, StatusCode};
use tower_http::classify::{ClassifiedResponse, ClassifyEos, ClassifyResponse};

/// gRPC codes and the HTTP statuses they stand for in the classification (the gRPC ↔ HTTP
/// mapping of the gRPC spec and Envoy).
const UNKNOWN: i32 = 2;
const DEADLINE_EXCEEDED: i32 = 4;
const RESOURCE_EXHAUSTED: i32 = 8;
const UNIMPLEMENTED: i32 = 12;
const INTERNAL: i32 = 13;
const UNAVAILABLE: i32 = 14;
const DATA_LOSS: i32 = 15;

/// The stock classifier of [`PassiveHealth`](super::PassiveHealth), a tower-http
/// [`ClassifyResponse`].
///
/// | outcome | failure by default | with [`server_errors`](Self::server_errors) | with [`too_many_requests`](Self::too_many_requests) |
/// |---|---|---|---|
/// | error from the endpoint (connect refused, reset, timeout) | yes | yes | yes |
/// | HTTP 502, 503, 504 | yes | yes | yes |
/// | other HTTP 5xx | no | yes | no |
/// | HTTP 429 | no | no | yes |
/// | gRPC `UNAVAILABLE`, `DEADLINE_EXCEEDED` (503, 504) | yes | yes | yes |
/// | gRPC `UNKNOWN`, `INTERNAL`, `UNIMPLEMENTED`, `DATA_LOSS` (5xx) | no | yes | no |
/// | gRPC `RESOURCE_EXHAUSTED` (429) | no | no | yes |
/// | gRPC stream that ends without `grpc-status` | yes | yes | yes |
///
/// A gRPC response (`content-type: application/grpc…`) is judged by its `grpc-status`:
/// in the headers for a trailers-only answer, otherwise in the trailers, so classification
/// waits for the end of the body.
///
/// Any other tower-http classifier plugs in too, e.g.
/// [`StatusInRangeAsFailures`](tower_http::classify::StatusInRangeAsFailures) or
/// [`GrpcErrorsAsFailures`](tower_http::classify::GrpcErrorsAsFailures).
#[derive(Debug, Clone, Copy)]
pub struct FailureStatuses {
    server_errors: bool,
    too_many_requests: bool,
}

impl Default for FailureStatuses {
    fn default() -> Self {
        Self::new()
    }
}

impl FailureStatuses {
    /// Errors, 502/503/504 and their gRPC counterparts are failures.
    pub fn new() -> Self {
        Self {
            server_errors: false,
            too_many_requests: false,
        }
    }

    /// Counts every 5xx (and gRPC `UNKNOWN`, `INTERNAL`, `UNIMPLEMENTED`, `DATA_LOSS`) as a
    /// failure, as Envoy's `consecutive_5xx` does.
    #[must_use]
    pub fn server_errors(mut self, yes: bool) -> Self {
        self.server_errors = yes;
        self
    }

    /// Counts 429 (and gRPC `RESOURCE_EXHAUSTED`) as a failure.
    #[must_use]
    pub fn too_many_requests(mut self, yes: bool) -> Self {
        self.too_many_requests = yes;
        self
    }

    fn judge_status(self, status: StatusCode) -> Result<(), Failure> {
        let failed = match status.as_u16() {
            502..=504 => true,
            500..=599 => self.server_errors,
            429 => self.too_many_requests,
            _ => false,
        };
        if failed {
            Err(Failure::Status(status))
        } else {
            Ok(())
        }
    }

    fn judge_grpc(self, code: i32) -> Result<(), Failure> {
        let failed = match code {
            UNAVAILABLE | DEADLINE_EXCEEDED => true,
            UNKNOWN | INTERNAL | UNIMPLEMENTED | DATA_LOSS => self.server_errors,
            RESOURCE_EXHAUSTED => self.too_many_requests,
            _ => false,
        };
        if failed {
            Err(Failure::Grpc(code))
        } else {
            Ok(())
        }
    }
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
}

fn grpc_status(headers: &HeaderMap) -> Option<i32> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse().ok())
}

impl ClassifyResponse for FailureStatuses {
    type FailureClass = Failure;
    type ClassifyEos = GrpcEos;

    fn classify_response<B>(self, res: &Response<B>) -> ClassifiedResponse<Failure, GrpcEos> {
        if !is_grpc(res.headers()) {
            return ClassifiedResponse::Ready(self.judge_status(res.status()));
        }
        if let Some(code) = grpc_status(res.headers()) {
            // Trailers-only answer.
            return ClassifiedResponse::Ready(self.judge_grpc(code));
        }
        if !res.status().is_success() {
            return ClassifiedResponse::Ready(self.judge_status(res.status()));
        }
        ClassifiedResponse::RequiresEos(GrpcEos { statuses: self })
    }

    fn classify_error<E>(self, error: &E) -> Failure
    where
        E: fmt::Display + 'static,
    {
        Failure::Error(error.to_string())
    }
}

/// Judges a gRPC stream by the `grpc-status` in its trailers; see [`FailureStatuses`].
#[derive(Debug, Clone, Copy)]
pub struct GrpcEos {
    statuses: FailureStatuses,
}

impl ClassifyEos for GrpcEos {
    type FailureClass = Failure;

    fn classify_eos(self, trailers: Option<&HeaderMap>) -> Result<(), Failure> {
        match trailers.and_then(grpc_status) {
            Some(code) => self.statuses.judge_grpc(code),
            None => Err(Failure::MissingGrpcStatus),
        }
    }

    fn classify_error<E>(self, error: &E) -> Failure
    where
        E: fmt::Display + 'static,
    {
        Failure::Error(error.to_string())
    }
}

/// Why [`FailureStatuses`] judged an outcome a failure.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Failure {
    /// A failing HTTP status.
    Status(StatusCode),
    /// A failing gRPC status code.
    Grpc(i32),
    /// A gRPC stream ended without a `grpc-status`.
    MissingGrpcStatus,
    /// The endpoint (or the response body) failed with this error.
    Error(String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Status(s) => write!(f, "status {s}"),
            Self::Grpc(code) => write!(f, "grpc-status {code}"),
            Self::MissingGrpcStatus => f.write_str("grpc stream ended without grpc-status"),
            Self::Error(e) => write!(f, "error: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rsp(status: u16) -> Response<()> {
        let mut r = Response::new(());
        *r.status_mut() = StatusCode::from_u16(status).unwrap();
        r
    }

    fn failed(c: FailureStatuses, status: u16) -> bool {
        match c.classify_response(&rsp(status)) {
            ClassifiedResponse::Ready(r) => r.is_err(),
            ClassifiedResponse::RequiresEos(_) => panic!("plain HTTP is judged at the headers"),
        }
    }

    #[test]
    fn default_fails_gateway_errors_only() {
        let c = FailureStatuses::new();
        for s in [502, 503, 504] {
            assert!(failed(c, s), "{s}");
        }
        for s in [200, 404, 429, 500, 501] {
            assert!(!failed(c, s), "{s}");
        }
    }

    #[test]
    fn server_errors_and_429_are_opt_in() {
        let c = FailureStatuses::new()
            .server_errors(true)
            .too_many_requests(true);
        for s in [429, 500, 501, 502, 599] {
            assert!(failed(c, s), "{s}");
        }
        assert!(!failed(c, 404));
    }

    #[test]
    fn grpc_waits_for_trailers() {
        let c = FailureStatuses::new();
        let mut r = rsp(200);
        r.headers_mut()
            .insert("content-type", "application/grpc".parse().unwrap());
        let ClassifiedResponse::RequiresEos(eos) = c.classify_response(&r) else {
            panic!("gRPC must wait for the trailers");
        };
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "14".parse().unwrap());
        assert_eq!(eos.classify_eos(Some(&trailers)), Err(Failure::Grpc(14)));
        trailers.insert("grpc-status", "0".parse().unwrap());
        assert_eq!(eos.classify_eos(Some(&trailers)), Ok(()));
        trailers.insert("grpc-status", "13".parse().unwrap());
        assert_eq!(eos.classify_eos(Some(&trailers)), Ok(()));
        assert_eq!(eos.classify_eos(None), Err(Failure::MissingGrpcStatus));
        // Trailers-only: the status is in the headers.
        r.headers_mut().insert("grpc-status", "4".parse().unwrap());
        assert!(matches!(
            c.classify_response(&r),
            ClassifiedResponse::Ready(Err(Failure::Grpc(4)))
        ));
    }
}
