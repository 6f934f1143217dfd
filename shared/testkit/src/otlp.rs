//! An OTLP/HTTP trace receiver: what an OpenTelemetry collector's `otlp` receiver does with
//! `POST /v1/traces` (protobuf `ExportTraceServiceRequest`, answered with an empty
//! `ExportTraceServiceResponse`), recording every span it is sent so a test can follow a trace
//! across processes. The HTTP side is a `wiremock` server; the payloads are decoded with the
//! OpenTelemetry protocol's own generated types (`opentelemetry-proto`).

use std::collections::BTreeMap;

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// One span as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedSpan {
    /// `service.name` of the process that sent it.
    pub service: String,
    /// Trace id, 32 lowercase hex digits.
    pub trace_id: String,
    /// Span id, 16 hex digits.
    pub span_id: String,
    /// Parent span id, 16 hex digits; empty for a root span.
    pub parent_span_id: String,
    /// Span name (`job`, `provision.step`, …).
    pub name: String,
    /// Attributes, values rendered as text (`tracing` fields become attributes).
    pub attributes: BTreeMap<String, String>,
}

/// A running receiver; stops when dropped.
#[derive(Debug)]
pub struct OtlpReceiver {
    server: MockServer,
}

impl OtlpReceiver {
    /// Starts a receiver on a free loopback port.
    pub async fn start() -> Self {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/v1/traces"))
            .and(header("content-type", "application/x-protobuf"))
            .respond_with(
                ResponseTemplate::new(200)
                    .insert_header("content-type", "application/x-protobuf")
                    .set_body_bytes(ExportTraceServiceResponse::default().encode_to_vec()),
            )
            .mount(&server)
            .await;
        Self { server }
    }

    /// The traces endpoint to configure (`telemetry.otlp_endpoint`).
    pub fn endpoint(&self) -> String {
        format!("{}/v1/traces", self.server.uri())
    }

    /// Every span received so far, in arrival order. Panics on a request that is not a valid
    /// OTLP export (a test that sent garbage should fail).
    pub async fn spans(&self) -> Vec<ReceivedSpan> {
        let mut spans = Vec::new();
        for request in self.server.received_requests().await.unwrap_or_default() {
            if request.url.path() != "/v1/traces" {
                continue;
            }
            let export = ExportTraceServiceRequest::decode(request.body.as_slice())
                .expect("an OTLP ExportTraceServiceRequest");
            for resource_spans in export.resource_spans {
                let service = resource_spans
                    .resource
                    .as_ref()
                    .and_then(|r| attribute(&r.attributes, "service.name"))
                    .unwrap_or_default();
                for scope_spans in resource_spans.scope_spans {
                    for span in scope_spans.spans {
                        spans.push(ReceivedSpan {
                            service: service.clone(),
                            trace_id: hex(&span.trace_id),
                            span_id: hex(&span.span_id),
                            parent_span_id: hex(&span.parent_span_id),
                            name: span.name,
                            attributes: span
                                .attributes
                                .iter()
                                .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
                                .collect(),
                        });
                    }
                }
            }
        }
        spans
    }
}

fn attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .map(|kv| text(kv.value.as_ref()))
}

fn text(value: Option<&AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
