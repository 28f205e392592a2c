//! ORCA load reports on responses: the backend side attaches them, the balancer side
//! reads them, and [`LoadReport`](crate::balance::strategy::LoadReport) weighs each
//! backend by them (gRPC A58 `weighted_round_robin`, Envoy
//! `client_side_weighted_round_robin`).
//!
//! A backend says how loaded it is in each response, as an
//! [`xds.data.orca.v3.OrcaLoadReport`](Report):
//!
//! | where | form | example |
//! |---|---|---|
//! | `endpoint-load-metrics` header | Envoy `TEXT` | `TEXT cpu_utilization=0.3, rps_fractional=10, named_metrics.foo=123` |
//! | `endpoint-load-metrics` header | Envoy `JSON` (protobuf JSON) | `JSON {"cpu_utilization": 0.3, "rps_fractional": 10}` |
//! | `endpoint-load-metrics` header | Envoy `BIN` | `BIN ` + base64 of the protobuf |
//! | `endpoint-load-metrics-bin` header or trailer | gRPC (C-core, Java, Go) | base64 of the protobuf, padded or not |
//!
//! - [`ReadReportsLayer`] goes in each endpoint's stack on the balancer side: it reads
//!   the report of every response, from its headers or, when they carry none, from its
//!   trailers (gRPC sends them there), and records it in the endpoint's
//!   [`ReportedLoad`](crate::balance::strategy::ReportedLoad). A malformed report is
//!   counted ([`ReportedLoad::malformed`](crate::balance::strategy::ReportedLoad::malformed)),
//!   logged at `debug` and otherwise ignored; the response passes unchanged.
//! - [`AttachReportLayer`] goes on a backend (an axum router, a tonic server): it adds the
//!   report a closure of yours returns to every response, in the [`Encoding`] you choose.
//! - [`Report`] parses and writes every form by hand (a small protobuf reader and writer:
//!   varints, 64-bit fields, length-delimited maps), with a typed [`ParseError`] for
//!   anything malformed and never a panic.
//!
//! As Envoy, the `-bin` header wins over `endpoint-load-metrics` when both are sent;
//! `TEXT` accepts `name=value` and `name:value`, rejects duplicate and unknown names, and
//! takes `named_metrics.`, `utilization.` and `request_cost.` prefixes for the maps. All
//! forms reject values that are not finite numbers, and negative values where the
//! protocol says `≥ 0` (utilizations, rates). `JSON` and the protobuf skip fields they
//! do not know, as protobuf parsers do.
//!
//! # Example
//!
//! Backends attach reports; the balancer reads them and weighs by them:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Full};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_lb::{
//!     balance::{strategy::LoadReport, Target},
//!     http::load_report::{AttachReportLayer, Encoding, ReadReportsLayer, Report},
//!     Backend, Balance,
//! };
//!
//! // A backend at 25 % CPU serving 100 requests a second.
//! let backend = ServiceBuilder::new()
//!     .layer(AttachReportLayer::new(|| {
//!         Report::new().with_cpu_utilization(0.25).with_rps_fractional(100.0)
//!     }).encoding(Encoding::Text))
//!     .service(service_fn(|_req: http::Request<()>| async {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from("hi"))))
//!     }));
//!
//! let balance = Balance::builder()
//!     .backends([Backend::new("a")])
//!     .strategy(LoadReport::new())
//!     .build(move |t: &Target<'_, &'static str>| {
//!         ServiceBuilder::new().layer(ReadReportsLayer::new(t)).service(backend.clone())
//!     })
//!     .unwrap();
//! let rsp = balance.clone().oneshot(http::Request::new(())).await.unwrap();
//! assert_eq!(
//!     rsp.headers()["endpoint-load-metrics"],
//!     "TEXT cpu_utilization=0.25,rps_fractional=100"
//! );
//! rsp.into_body().collect().await.unwrap();
//! # }
//! ```

use std::{collections::BTreeMap, fmt};

use http::{HeaderMap, HeaderName, HeaderValue};

mod attach;
mod proto;
mod read;
#[cfg(test)]
mod tests;

pub use attach::{AttachBody, AttachFuture, AttachReport, AttachReportLayer, Encoding};
pub use read::{ReadBody, ReadFuture, ReadReports, ReadReportsLayer};

/// The header (or trailer) of Envoy's `TEXT`, `JSON` and `BIN` forms.
pub const HEADER: HeaderName = HeaderName::from_static("endpoint-load-metrics");
/// The header or trailer of gRPC's form: base64 of the protobuf.
pub const HEADER_BIN: HeaderName = HeaderName::from_static("endpoint-load-metrics-bin");

/// The names of the report's scalar fields, in `snake_case` and protobuf JSON's
/// `lowerCamelCase`.
const SCALARS: [&str; 9] = [
    "cpu_utilization",
    "cpuUtilization",
    "mem_utilization",
    "memUtilization",
    "application_utilization",
    "applicationUtilization",
    "rps_fractional",
    "rpsFractional",
    "eps",
];

/// One ORCA load report: the fields of `xds.data.orca.v3.OrcaLoadReport` (cncf/xds),
/// with protobuf's zero for "not set".
///
/// ```
/// use tower_lb::http::load_report::Report;
///
/// let r = Report::new().with_cpu_utilization(0.3).with_rps_fractional(10.0)
///     .with_named_metric("foo", 123.0);
/// assert_eq!(r.to_text().unwrap(), "TEXT cpu_utilization=0.3,rps_fractional=10,named_metrics.foo=123");
/// assert_eq!(Report::parse_header(r.to_text().unwrap().as_bytes()).unwrap(), r);
/// assert_eq!(Report::decode(&r.encode()).unwrap(), r);
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct Report {
    /// CPU utilization, a fraction of the available CPU (field 1; may exceed 1).
    pub cpu_utilization: f64,
    /// Memory utilization, a fraction of the available memory (field 2).
    pub mem_utilization: f64,
    /// Application-specific utilization (field 9): used instead of CPU when above 0.
    pub application_utilization: f64,
    /// Requests per second served (field 6, `rps_fractional`): A58's qps.
    pub rps_fractional: f64,
    /// Errors per second (field 7).
    pub eps: f64,
    /// Absolute costs of this request (field 4).
    pub request_cost: BTreeMap<String, f64>,
    /// Named utilizations, fractions of their resources (field 5).
    pub utilization: BTreeMap<String, f64>,
    /// Application-specific metrics (field 8).
    pub named_metrics: BTreeMap<String, f64>,
}

impl Report {
    /// An empty report.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `cpu_utilization`.
    #[must_use]
    pub fn with_cpu_utilization(mut self, v: f64) -> Self {
        self.cpu_utilization = v;
        self
    }

    /// Sets `mem_utilization`.
    #[must_use]
    pub fn with_mem_utilization(mut self, v: f64) -> Self {
        self.mem_utilization = v;
        self
    }

    /// Sets `application_utilization`.
    #[must_use]
    pub fn with_application_utilization(mut self, v: f64) -> Self {
        self.application_utilization = v;
        self
    }

    /// Sets `rps_fractional` (queries per second).
    #[must_use]
    pub fn with_rps_fractional(mut self, v: f64) -> Self {
        self.rps_fractional = v;
        self
    }

    /// Sets `eps` (errors per second).
    #[must_use]
    pub fn with_eps(mut self, v: f64) -> Self {
        self.eps = v;
        self
    }

    /// Adds one of `named_metrics`.
    #[must_use]
    pub fn with_named_metric(mut self, name: impl Into<String>, v: f64) -> Self {
        self.named_metrics.insert(name.into(), v);
        self
    }

    /// The report of a response or trailer block: `endpoint-load-metrics-bin` if present
    /// (gRPC's form; it wins, as in Envoy), else `endpoint-load-metrics`; `None` when
    /// neither is there.
    pub fn from_headers(headers: &HeaderMap) -> Option<Result<Self, ParseError>> {
        if let Some(v) = headers.get(HEADER_BIN) {
            return Some(Self::decode_base64(v.as_bytes()));
        }
        headers
            .get(HEADER)
            .map(|v| Self::parse_header(v.as_bytes()))
    }

    /// Parses an `endpoint-load-metrics` value: `TEXT …`, `JSON …` or `BIN …`.
    pub fn parse_header(value: &[u8]) -> Result<Self, ParseError> {
        let text = std::str::from_utf8(value).map_err(|_| ParseError::new(Kind::NotUtf8))?;
        if let Some(rest) = text.strip_prefix("TEXT ") {
            Self::parse_text(rest)
        } else if let Some(rest) = text.strip_prefix("JSON ") {
            Self::parse_json(rest)
        } else if let Some(rest) = text.strip_prefix("BIN ") {
            Self::decode_base64(rest.as_bytes())
        } else {
            let prefix: String = text.chars().take_while(|c| *c != ' ').take(5).collect();
            Err(ParseError::new(Kind::Format(prefix)))
        }
    }

    /// Parses Envoy's `TEXT` form without its prefix:
    /// `cpu_utilization=0.3, rps_fractional=10, named_metrics.foo=123`.
    pub fn parse_text(text: &str) -> Result<Self, ParseError> {
        let mut report = Self::default();
        let mut seen: Vec<&str> = Vec::new();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let at = item
                .find(['=', ':'])
                .ok_or_else(|| ParseError::new(Kind::NoValue(item.into())))?;
            let (name, value) = (item[..at].trim(), item[at + 1..].trim());
            if name.is_empty() {
                return Err(ParseError::new(Kind::EmptyName));
            }
            if seen.contains(&name) {
                return Err(ParseError::new(Kind::Duplicate(name.into())));
            }
            seen.push(name);
            let v: f64 = value
                .parse()
                .map_err(|_| ParseError::new(Kind::NotANumber(name.into())))?;
            report.set(name, v)?;
        }
        report.validate()?;
        Ok(report)
    }

    /// Sets the field that a `TEXT` name or a JSON key names.
    fn set(&mut self, name: &str, v: f64) -> Result<(), ParseError> {
        let maps = [
            ("named_metrics.", &mut self.named_metrics),
            ("utilization.", &mut self.utilization),
            ("request_cost.", &mut self.request_cost),
        ];
        for (prefix, map) in maps {
            if let Some(key) = name.strip_prefix(prefix) {
                if key.is_empty() {
                    return Err(ParseError::new(Kind::EmptyName));
                }
                map.insert(key.to_owned(), v);
                return Ok(());
            }
        }
        let field = match name {
            "cpu_utilization" | "cpuUtilization" => &mut self.cpu_utilization,
            "mem_utilization" | "memUtilization" => &mut self.mem_utilization,
            "application_utilization" | "applicationUtilization" => {
                &mut self.application_utilization
            }
            "rps_fractional" | "rpsFractional" => &mut self.rps_fractional,
            "eps" => &mut self.eps,
            _ => return Err(ParseError::new(Kind::Unknown(name.into()))),
        };
        *field = v;
        Ok(())
    }

    /// Parses Envoy's `JSON` form without its prefix: the protobuf JSON of the report,
    /// with `snake_case` or `lowerCamelCase` names, numbers or numeric strings, maps as
    /// objects. Unknown fields are skipped.
    pub fn parse_json(text: &str) -> Result<Self, ParseError> {
        use serde_json::Value;
        let number = |name: &str, v: &Value| -> Result<f64, ParseError> {
            match v {
                Value::Number(n) => n.as_f64(),
                Value::String(s) => s.trim().parse().ok(),
                _ => None,
            }
            .ok_or_else(|| ParseError::new(Kind::NotANumber(name.into())))
        };
        let doc: Value =
            serde_json::from_str(text).map_err(|e| ParseError::new(Kind::Json(e.to_string())))?;
        let Value::Object(fields) = doc else {
            return Err(ParseError::new(Kind::Json("not an object".into())));
        };
        let mut report = Self::default();
        for (name, v) in &fields {
            let prefix = match name.as_str() {
                "request_cost" | "requestCost" => "request_cost.",
                "utilization" => "utilization.",
                "named_metrics" | "namedMetrics" => "named_metrics.",
                "rps" => continue, // deprecated integer field: ignored, as gRPC does
                scalar if SCALARS.contains(&scalar) => {
                    report.set(scalar, number(scalar, v)?)?;
                    continue;
                }
                _ => continue, // unknown: skipped, as protobuf parsers do
            };
            let Value::Object(entries) = v else {
                return Err(ParseError::new(Kind::Json(format!(
                    "{name} is not an object"
                ))));
            };
            for (key, v) in entries {
                report.set(&format!("{prefix}{key}"), number(key, v)?)?;
            }
        }
        report.validate()?;
        Ok(report)
    }

    /// Decodes the protobuf wire form of `OrcaLoadReport`.
    pub fn decode(bytes: &[u8]) -> Result<Self, ParseError> {
        let report = proto::decode(bytes)?;
        report.validate()?;
        Ok(report)
    }

    /// Decodes base64 (standard alphabet, padded or not) of the protobuf: the value of
    /// `endpoint-load-metrics-bin`.
    pub fn decode_base64(text: &[u8]) -> Result<Self, ParseError> {
        Self::decode(&proto::base64_decode(text)?)
    }

    /// The protobuf wire form (fields in number order, zeros left out, map entries by
    /// key).
    pub fn encode(&self) -> Vec<u8> {
        proto::encode(self)
    }

    /// Unpadded base64 of [`encode`](Self::encode), as gRPC sends `-bin` metadata.
    pub fn to_base64(&self) -> String {
        proto::base64_encode(&self.encode())
    }

    /// Envoy's `TEXT` form, prefix included; zeros are left out. Map keys must be
    /// printable ASCII without `,`, `=`, `:` or spaces, or there is no `TEXT` form of the
    /// report ([`EncodeError`]).
    pub fn to_text(&self) -> Result<String, EncodeError> {
        let mut out = String::from("TEXT ");
        let mut items = Vec::new();
        let fields = [
            ("cpu_utilization", self.cpu_utilization),
            ("mem_utilization", self.mem_utilization),
            ("application_utilization", self.application_utilization),
            ("rps_fractional", self.rps_fractional),
            ("eps", self.eps),
        ];
        for (name, v) in fields {
            if v != 0.0 {
                items.push(format!("{name}={v}"));
            }
        }
        let maps = [
            ("request_cost.", &self.request_cost),
            ("utilization.", &self.utilization),
            ("named_metrics.", &self.named_metrics),
        ];
        for (prefix, map) in maps {
            for (key, v) in map {
                let plain = !key.is_empty()
                    && key
                        .bytes()
                        .all(|b| b.is_ascii_graphic() && !matches!(b, b',' | b'=' | b':'));
                if !plain {
                    return Err(EncodeError { name: key.clone() });
                }
                items.push(format!("{prefix}{key}={v}"));
            }
        }
        out.push_str(&items.join(","));
        Ok(out)
    }

    /// Envoy's `JSON` form, prefix included (protobuf JSON names, zeros left out).
    pub fn to_json(&self) -> String {
        let mut doc = serde_json::Map::new();
        let fields = [
            ("cpu_utilization", self.cpu_utilization),
            ("mem_utilization", self.mem_utilization),
            ("application_utilization", self.application_utilization),
            ("rps_fractional", self.rps_fractional),
            ("eps", self.eps),
        ];
        for (name, v) in fields {
            if v != 0.0 {
                doc.insert(name.into(), v.into());
            }
        }
        let maps = [
            ("request_cost", &self.request_cost),
            ("utilization", &self.utilization),
            ("named_metrics", &self.named_metrics),
        ];
        for (name, map) in maps {
            if !map.is_empty() {
                let entries = map.iter().map(|(k, &v)| (k.clone(), v.into())).collect();
                doc.insert(name.into(), serde_json::Value::Object(entries));
            }
        }
        format!("JSON {}", serde_json::Value::Object(doc))
    }

    /// The header (name and value) for `encoding`: `endpoint-load-metrics` with `TEXT` or
    /// `JSON`, or `endpoint-load-metrics-bin` with base64 of the protobuf.
    pub fn to_header(&self, encoding: Encoding) -> Result<(HeaderName, HeaderValue), EncodeError> {
        let invalid = || EncodeError {
            name: String::new(),
        };
        Ok(match encoding {
            Encoding::Text => (
                HEADER,
                HeaderValue::from_str(&self.to_text()?).map_err(|_| invalid())?,
            ),
            Encoding::Json => (
                HEADER,
                HeaderValue::from_str(&self.to_json()).map_err(|_| invalid())?,
            ),
            Encoding::Binary | Encoding::GrpcTrailers => (
                HEADER_BIN,
                HeaderValue::from_str(&self.to_base64()).map_err(|_| invalid())?,
            ),
        })
    }

    /// The protocol's bounds: every value a finite number; utilizations and rates ≥ 0.
    fn validate(&self) -> Result<(), ParseError> {
        let bounded = [
            ("cpu_utilization", self.cpu_utilization),
            ("mem_utilization", self.mem_utilization),
            ("application_utilization", self.application_utilization),
            ("rps_fractional", self.rps_fractional),
            ("eps", self.eps),
        ];
        let utilizations = self.utilization.iter().map(|(k, &v)| (k.as_str(), v));
        for (name, v) in bounded.into_iter().chain(utilizations) {
            if !v.is_finite() {
                return Err(ParseError::new(Kind::NotFinite(name.into())));
            }
            if v < 0.0 {
                return Err(ParseError::new(Kind::Negative(name.into())));
            }
        }
        let others = self.named_metrics.iter().chain(&self.request_cost);
        for (name, v) in others {
            if !v.is_finite() {
                return Err(ParseError::new(Kind::NotFinite(name.clone())));
            }
        }
        Ok(())
    }
}

/// A load report that could not be parsed; see the [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Format(String),
    NotUtf8,
    NoValue(String),
    EmptyName,
    Duplicate(String),
    Unknown(String),
    NotANumber(String),
    NotFinite(String),
    Negative(String),
    Json(String),
    Base64,
    Protobuf(&'static str),
}

impl ParseError {
    fn new(kind: Kind) -> Self {
        Self { kind }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("malformed load report: ")?;
        match &self.kind {
            Kind::Format(p) => write!(f, "unsupported format {p:?} (TEXT, JSON or BIN)"),
            Kind::NotUtf8 => f.write_str("not UTF-8"),
            Kind::NoValue(item) => write!(f, "{item:?} has no value"),
            Kind::EmptyName => f.write_str("empty metric name"),
            Kind::Duplicate(n) => write!(f, "duplicate metric {n:?}"),
            Kind::Unknown(n) => write!(f, "unknown metric {n:?}"),
            Kind::NotANumber(n) => write!(f, "the value of {n:?} is not a number"),
            Kind::NotFinite(n) => write!(f, "the value of {n:?} is not finite"),
            Kind::Negative(n) => write!(f, "the value of {n:?} is negative"),
            Kind::Json(e) => write!(f, "bad JSON: {e}"),
            Kind::Base64 => f.write_str("bad base64"),
            Kind::Protobuf(e) => write!(f, "bad protobuf: {e}"),
        }
    }
}

impl std::error::Error for ParseError {}

/// A report that has no form in the chosen [`Encoding`]: a metric name that `TEXT`
/// cannot carry, or a value that is not a valid header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodeError {
    name: String,
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.name.is_empty() {
            f.write_str("load report is not a valid header value")
        } else {
            write!(f, "metric name {:?} cannot be sent in TEXT form", self.name)
        }
    }
}

impl std::error::Error for EncodeError {}
