use std::{convert::Infallible, sync::Arc};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response};
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use proptest::prelude::*;
use tower::{service_fn, Layer, ServiceBuilder, ServiceExt};

use super::*;
use crate::balance::strategy::ReportedLoad;

fn example() -> Report {
    let mut r = Report::new()
        .with_cpu_utilization(0.7)
        .with_application_utilization(0.8)
        .with_mem_utilization(0.9)
        .with_rps_fractional(1000.0)
        .with_eps(2.0)
        .with_named_metric("foo", 123.0)
        .with_named_metric("bar", 0.2);
    r.utilization.insert("total".into(), 0.5);
    r.request_cost.insert("db".into(), 3487.0);
    r
}

#[test]
fn text_form_as_envoy_writes_it() {
    let text = "TEXT cpu_utilization=0.7,application_utilization=0.8,mem_utilization=0.9,\
                rps_fractional=1000,eps=2,named_metrics.foo=123,named_metrics.bar=0.2,\
                utilization.total=0.5, request_cost.db = 3487";
    assert_eq!(Report::parse_header(text.as_bytes()).unwrap(), example());
    // Colons instead of equals signs, and spaces after commas.
    let colons = "TEXT cpu_utilization:0.3, rps_fractional:10, named_metrics.foo:123";
    let r = Report::parse_header(colons.as_bytes()).unwrap();
    assert_eq!(
        (r.cpu_utilization, r.rps_fractional, r.named_metrics["foo"]),
        (0.3, 10.0, 123.0)
    );
    // What we write reads back.
    let ours = example().to_text().unwrap();
    assert_eq!(Report::parse_header(ours.as_bytes()).unwrap(), example());
}

#[test]
fn json_form_in_both_spellings() {
    let snake = r#"JSON {"cpu_utilization": 0.7, "application_utilization": 0.8,
        "mem_utilization": 0.9, "rps_fractional": 1000, "eps": 2,
        "named_metrics": {"foo": 123, "bar": 0.2}, "utilization": {"total": 0.5},
        "request_cost": {"db": "3487"}, "rps": 7, "future_field": [1, 2]}"#;
    assert_eq!(Report::parse_header(snake.as_bytes()).unwrap(), example());
    let camel = r#"JSON {"cpuUtilization": 0.7, "applicationUtilization": 0.8,
        "memUtilization": 0.9, "rpsFractional": "1000", "eps": 2,
        "namedMetrics": {"foo": 123, "bar": 0.2}, "utilization": {"total": 0.5},
        "requestCost": {"db": 3487}}"#;
    assert_eq!(Report::parse_header(camel.as_bytes()).unwrap(), example());
    let ours = example().to_json();
    assert_eq!(Report::parse_header(ours.as_bytes()).unwrap(), example());
}

#[test]
fn binary_forms_round_trip() {
    let r = example();
    assert_eq!(Report::decode(&r.encode()).unwrap(), r);
    assert_eq!(Report::decode_base64(r.to_base64().as_bytes()).unwrap(), r);
    let bin = format!("BIN {}", r.to_base64());
    assert_eq!(Report::parse_header(bin.as_bytes()).unwrap(), r);
    // Empty message: every field zero.
    assert_eq!(Report::decode(&[]).unwrap(), Report::default());
    assert!(Report::default().encode().is_empty());
}

#[test]
fn known_bytes_decode() {
    // cpu_utilization = 0.5 (field 1, fixed64), rps_fractional = 10 (field 6),
    // named_metrics {"a": 1.0} (field 8), an unknown varint field 15 = 150, the
    // deprecated rps = 3 (field 3, varint).
    let mut bytes = vec![0x09];
    bytes.extend(0.5f64.to_le_bytes());
    bytes.push(0x31);
    bytes.extend(10f64.to_le_bytes());
    bytes.extend([0x42, 0x0c, 0x0a, 0x01, b'a', 0x11]);
    bytes.extend(1f64.to_le_bytes());
    bytes.extend([0x78, 0x96, 0x01, 0x18, 0x03]);
    let r = Report::decode(&bytes).unwrap();
    assert_eq!(
        r,
        Report::new()
            .with_cpu_utilization(0.5)
            .with_rps_fractional(10.0)
            .with_named_metric("a", 1.0)
    );
}

#[test]
fn malformed_reports_are_typed_errors() {
    let bad: &[&[u8]] = &[
        b"",
        b"cpu_utilization=0.3",
        b"XML <load/>",
        b"TEXT cpu_utilization",
        b"TEXT =0.3",
        b"TEXT cpu_utilization=0.3,cpu_utilization=0.4",
        b"TEXT gpu_utilization=0.3",
        b"TEXT cpu_utilization=\"0.3\"",
        b"TEXT cpu_utilization=NaN",
        b"TEXT rps_fractional=inf",
        b"TEXT cpu_utilization=-0.5",
        b"TEXT named_metrics.=1",
        b"TEXT utilization.disk=-1",
        b"JSON [1, 2]",
        b"JSON {\"cpu_utilization\": \"high\"}",
        b"JSON {\"cpu_utilization\": \"NaN\"}",
        b"JSON {\"named_metrics\": 3}",
        b"JSON {\"cpu_utilization\": 0.3",
        b"BIN !!!!",
        b"BIN CQ",
        b"TEXT cpu_utilization=\xff",
    ];
    for b in bad {
        let e = Report::parse_header(b).expect_err(&String::from_utf8_lossy(b));
        assert!(e.to_string().starts_with("malformed load report: "), "{e}");
    }
    // Protobuf: truncated double, over-long varint, wrong wire type, a group, field 0,
    // a map entry without a key, a key not UTF-8, a length past the end.
    let bad_proto: &[&[u8]] = &[
        &[0x09, 0, 0, 0],
        &[
            0x78, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
        ],
        &[0x08, 0x01],
        &[0x7b],
        &[0x00, 0x00],
        &[0x42, 0x00],
        &[0x42, 0x03, 0x0a, 0x01, 0xff],
        &[0x42, 0x05, 0x0a],
        &[0x7a, 0xff, 0xff, 0xff, 0xff, 0x0f],
    ];
    for b in bad_proto {
        assert!(Report::decode(b).is_err(), "{b:02x?}");
    }
    // Negative utilization in the protobuf.
    let mut neg = vec![0x09];
    neg.extend((-1f64).to_le_bytes());
    assert!(Report::decode(&neg).is_err());
}

#[test]
fn base64_both_paddings() {
    for n in 0..12 {
        let bytes: Vec<u8> = (0..n).map(|i| (i * 37 + 11) as u8).collect();
        let unpadded = proto::base64_encode(&bytes);
        assert_eq!(proto::base64_decode(unpadded.as_bytes()).unwrap(), bytes);
        let mut padded = unpadded.clone();
        while !padded.len().is_multiple_of(4) {
            padded.push('=');
        }
        assert_eq!(proto::base64_decode(padded.as_bytes()).unwrap(), bytes);
    }
    assert_eq!(proto::base64_encode(b"foobar"), "Zm9vYmFy");
    assert_eq!(proto::base64_encode(b"fo"), "Zm8");
}

#[test]
fn text_cannot_carry_every_name() {
    let r = Report::new().with_named_metric("a,b", 1.0);
    assert!(r.to_text().is_err());
    // The layer falls back to JSON for it.
    let mut headers = HeaderMap::new();
    attach::attach(&mut headers, &r, Encoding::Text);
    let v = headers[HEADER].to_str().unwrap();
    assert!(v.starts_with("JSON "), "{v}");
    assert_eq!(Report::parse_header(v.as_bytes()).unwrap(), r);
}

fn arb_name() -> impl Strategy<Value = String> {
    "[a-z_][a-z0-9_.-]{0,12}"
}

fn arb_report() -> impl Strategy<Value = Report> {
    let v = 0.0..1e6f64;
    let map = || prop::collection::btree_map(arb_name(), 0.0..1e6f64, 0..4);
    (
        (v.clone(), v.clone(), v.clone(), v.clone(), v),
        (map(), map(), map()),
    )
        .prop_map(|((cpu, mem, app, qps, eps), (cost, util, named))| {
            let mut r = Report::new()
                .with_cpu_utilization(cpu)
                .with_mem_utilization(mem)
                .with_application_utilization(app)
                .with_rps_fractional(qps)
                .with_eps(eps);
            r.request_cost = cost;
            r.utilization = util;
            r.named_metrics = named;
            r
        })
}

proptest! {
    #[test]
    fn every_form_round_trips(r in arb_report()) {
        prop_assert_eq!(&Report::decode(&r.encode()).unwrap(), &r);
        prop_assert_eq!(&Report::decode_base64(r.to_base64().as_bytes()).unwrap(), &r);
        prop_assert_eq!(&Report::parse_header(r.to_text().unwrap().as_bytes()).unwrap(), &r);
        prop_assert_eq!(&Report::parse_header(r.to_json().as_bytes()).unwrap(), &r);
    }

    #[test]
    fn hostile_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        let _ = Report::decode(&bytes);
        let _ = Report::decode_base64(&bytes);
        let _ = Report::parse_header(&bytes);
    }

    #[test]
    fn hostile_text_never_panics(s in "(TEXT |JSON |BIN )[ -~]{0,60}") {
        let _ = Report::parse_header(s.as_bytes());
    }

    #[test]
    fn mangled_reports_never_panic(r in arb_report(), at in any::<prop::sample::Index>(), byte: u8) {
        let mut bytes = r.encode();
        if !bytes.is_empty() {
            let i = at.index(bytes.len());
            bytes[i] = byte;
            let _ = Report::decode(&bytes);
            bytes.truncate(i);
            let _ = Report::decode(&bytes);
        }
    }
}

// === the layers ===

fn reader() -> (ReadReportsLayer, Arc<ReportedLoad>) {
    let load = Arc::new(ReportedLoad::default());
    (ReadReportsLayer::from_load("b", load.clone()), load)
}

#[tokio::test]
async fn reads_reports_from_headers() {
    let (layer, load) = reader();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .layer(
            AttachReportLayer::new(|| {
                Report::new()
                    .with_cpu_utilization(0.5)
                    .with_rps_fractional(100.0)
            })
            .encoding(Encoding::Json),
        )
        .service(service_fn(|_: ()| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("x"))))
        }));
    let rsp = svc.clone().oneshot(()).await.unwrap();
    assert!(rsp.headers()[HEADER].to_str().unwrap().starts_with("JSON "));
    assert_eq!(load.reports(), 1);
    let body = rsp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "x");
    assert_eq!(load.reports(), 1, "the header is read once");
}

#[tokio::test]
async fn reads_grpc_reports_from_trailers() {
    let (layer, load) = reader();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .layer(
            AttachReportLayer::new(|| {
                Report::new()
                    .with_application_utilization(0.25)
                    .with_rps_fractional(40.0)
            })
            .encoding(Encoding::GrpcTrailers),
        )
        .service(service_fn(|_: ()| async {
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("0"));
            let frames = futures_util::stream::iter([
                Ok::<_, Infallible>(http_body::Frame::data(Bytes::from("msg"))),
                Ok(http_body::Frame::trailers(trailers)),
            ]);
            Ok::<_, Infallible>(Response::new(StreamBody::new(frames)))
        }));
    let rsp = svc.clone().oneshot(()).await.unwrap();
    assert!(!rsp.headers().contains_key(HEADER_BIN));
    assert_eq!(load.reports(), 0, "not before the trailers");
    let collected = rsp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().unwrap().clone();
    assert_eq!(trailers["grpc-status"], "0");
    let r = Report::decode_base64(trailers[HEADER_BIN].as_bytes()).unwrap();
    assert_eq!(r.application_utilization, 0.25);
    assert_eq!(load.reports(), 1);
    assert_eq!(collected.to_bytes(), "msg");
}

#[tokio::test]
async fn grpc_trailers_without_trailers_or_body() {
    // A body that ends without trailers gets a trailer block; an empty one, a header.
    let attach = AttachReportLayer::new(|| Report::new().with_cpu_utilization(0.1))
        .encoding(Encoding::GrpcTrailers);
    let svc = attach.layer(service_fn(|_: ()| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("x"))))
    }));
    let rsp = svc.oneshot(()).await.unwrap();
    let collected = rsp.into_body().collect().await.unwrap();
    assert!(collected.trailers().unwrap().contains_key(HEADER_BIN));
    let svc = attach.layer(service_fn(|_: ()| async {
        Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
    }));
    let rsp = svc.oneshot(()).await.unwrap();
    assert!(rsp.headers().contains_key(HEADER_BIN));
}

#[tokio::test]
async fn malformed_reports_are_counted_and_pass() {
    let (layer, load) = reader();
    let svc = layer.layer(service_fn(|_: ()| async {
        let mut rsp = Response::new(Full::new(Bytes::from("x")));
        rsp.headers_mut().insert(
            HEADER,
            HeaderValue::from_static("TEXT cpu_utilization=lots"),
        );
        Ok::<_, Infallible>(rsp)
    }));
    let rsp = svc.oneshot(()).await.unwrap();
    assert_eq!(rsp.status(), 200);
    assert_eq!((load.reports(), load.malformed()), (0, 1));
    // Reports without weight are counted as ignored.
    let (layer, load) = reader();
    let svc = layer.layer(service_fn(|_: ()| async {
        let mut rsp = Response::new(Full::new(Bytes::from("x")));
        rsp.headers_mut()
            .insert(HEADER, HeaderValue::from_static("TEXT mem_utilization=0.5"));
        Ok::<_, Infallible>(rsp)
    }));
    svc.oneshot(()).await.unwrap();
    assert_eq!(
        (load.reports(), load.ignored(), load.malformed()),
        (0, 1, 0)
    );
}
