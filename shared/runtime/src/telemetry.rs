//! Logs and traces.
//!
//! Logs: tracing-subscriber, pretty for humans or JSON for machines, filtered by `RUST_LOG`
//! (or the configured filter). Traces: OpenTelemetry spans for every `tracing` span, exported
//! over OTLP/HTTP when an endpoint is configured; W3C trace context travels in NATS headers
//! (`traceparent`), so `tenant.created` → provisioner → `hooks.tenant.created` is one trace.

use std::time::Duration;

use async_nats::HeaderMap;
use fleet_config::{LogFormat, TelemetryConfig};
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry};

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP exporter could not be built.
    #[error("OTLP exporter: {0}")]
    Exporter(String),
    /// A global subscriber is already installed.
    #[error("a tracing subscriber is already installed")]
    AlreadyInstalled,
}

/// How long shutting down may spend exporting the last spans: a collector that is down or
/// does not answer must not hold a stopping worker past its termination grace.
pub const SHUTDOWN_FLUSH: Duration = Duration::from_secs(2);

/// How long one OTLP export may take before it is abandoned (the spans in it are lost).
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(3);

/// Keeps the tracer provider alive; exports the pending spans and stops when shut down or
/// dropped, within [`SHUTDOWN_FLUSH`].
#[derive(Debug)]
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
    stopped: std::sync::atomic::AtomicBool,
}

impl TelemetryGuard {
    /// Exports what is pending and stops span export (once; later calls do nothing).
    pub fn shutdown(&self) {
        if !self.stopped.swap(true, std::sync::atomic::Ordering::SeqCst) {
            let _ = self.provider.shutdown_with_timeout(SHUTDOWN_FLUSH);
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The tracer provider: spans get ids (for propagation) always, and are exported over
/// OTLP/HTTP (protobuf) to `otlp_endpoint` when it is set. `sample_ratio` (0.0–1.0) is the
/// share of the traces this process starts that are recorded, decided by trace id; a span with
/// a remote parent (a `traceparent` in the message or request) follows the parent's decision.
pub fn tracer_provider(
    service: &str,
    otlp_endpoint: &str,
    sample_ratio: f64,
) -> Result<SdkTracerProvider, TelemetryError> {
    use opentelemetry_sdk::trace::Sampler;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service.to_owned())
        .build();
    let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(sample_ratio)));
    let mut builder = SdkTracerProvider::builder()
        .with_resource(resource)
        .with_sampler(sampler);
    if !otlp_endpoint.is_empty() {
        // The batch processor exports from a thread of its own, outside the Tokio runtime:
        // its HTTP client must be the blocking one (an async client there panics with "no
        // reactor running" and every span is lost — the provisioner's tracing test).
        use opentelemetry_otlp::WithExportConfig;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(otlp_endpoint)
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
        builder = builder.with_batch_exporter(exporter);
    }
    Ok(builder.build())
}

/// Installs logging and tracing for the process.
pub fn init(service: &str, config: &TelemetryConfig) -> Result<TelemetryGuard, TelemetryError> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let provider = tracer_provider(service, &config.otlp_endpoint, config.trace_sample_ratio)?;
    let tracer = provider.tracer(service.to_owned());
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log_filter));
    let otel = tracing_opentelemetry::layer().with_tracer(tracer);
    let registry = Registry::default().with(filter).with(otel);
    let installed = match config.log_format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true),
            )
            .try_init(),
        LogFormat::Pretty => registry.with(tracing_subscriber::fmt::layer()).try_init(),
    };
    installed.map_err(|_| TelemetryError::AlreadyInstalled)?;
    Ok(TelemetryGuard {
        provider,
        stopped: std::sync::atomic::AtomicBool::new(false),
    })
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value.as_str());
    }
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_ref()).collect()
    }
}

/// Writes the current span's trace context into `headers`.
pub fn inject_context(headers: &mut HeaderMap) {
    let context = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut HeaderInjector(headers))
    });
}

/// Makes `span` a child of the trace context in `headers`, when there is one.
pub fn set_parent_from_headers(span: &tracing::Span, headers: &HeaderMap) {
    if headers.get("traceparent").is_none() {
        return;
    }
    let context = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&HeaderExtractor(headers))
    });
    let _ = span.set_parent(context);
}
