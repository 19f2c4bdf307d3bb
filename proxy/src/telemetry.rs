//! Logs and traces. Logs go to stderr through `tracing` (pretty or JSON, by config). When
//! `telemetry.otlp_endpoint` is set, spans (connection, submit, upstream round trip) are also
//! exported over OTLP/HTTP (protobuf) in batches; otherwise nothing is exported and the
//! tracing layer is not installed at all.

use loka_config::{Config, LogFormat};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Keeps the exporter alive; dropping it flushes the last spans.
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            let _ = p.shutdown();
        }
    }
}

/// `http://collector:4318` → `http://collector:4318/v1/traces` (a full path is kept).
pub fn traces_url(endpoint: &str) -> String {
    let e = endpoint.trim_end_matches('/');
    if e.ends_with("/v1/traces") {
        e.to_string()
    } else {
        format!("{e}/v1/traces")
    }
}

/// The OTLP span exporter's tracer provider, if configured.
pub fn tracer_provider(cfg: &Config) -> anyhow::Result<Option<SdkTracerProvider>> {
    if cfg.telemetry.otlp_endpoint.is_empty() {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(traces_url(&cfg.telemetry.otlp_endpoint))
        .build()?;
    let name = cfg
        .telemetry
        .service_name
        .clone()
        .unwrap_or_else(|| "loka-proxy".into());
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(name)
        .build();
    Ok(Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build(),
    ))
}

/// Install the global subscriber: log format and filter from the config, plus OTLP export.
pub fn init(cfg: &Config) -> anyhow::Result<TelemetryGuard> {
    let filter = EnvFilter::try_new(&cfg.logging.level)
        .map_err(|e| anyhow::anyhow!("logging.level {:?}: {e}", cfg.logging.level))?;
    let fmt = match cfg.logging.format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_target(false)
            .boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer().with_target(false).boxed(),
    };
    let provider = tracer_provider(cfg)?;
    let otel = provider.as_ref().map(|p| {
        // Spans of this crate at debug level and above (a span per submit is a debug span).
        let traces = EnvFilter::new("loka_proxy=debug,loka_store=info,warn");
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("loka-proxy"))
            .with_filter(traces)
    });
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(otel)
        .try_init()?;
    Ok(TelemetryGuard { provider })
}

#[cfg(test)]
mod tests {
    #[test]
    fn trace_urls() {
        assert_eq!(
            super::traces_url("http://c:4318"),
            "http://c:4318/v1/traces"
        );
        assert_eq!(
            super::traces_url("http://c:4318/v1/traces/"),
            "http://c:4318/v1/traces"
        );
    }
}
