//! `/metrics`: Prometheus counters, gauges and histograms (the `prometheus-client` crate,
//! OpenMetrics text). Labels are tenant ids, status codes, plugin names and error codes, all
//! bounded by the configuration; requests that reach no tenant route count under
//! [`NO_TENANT`] so a scan of random paths cannot grow the label set.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::headers::SERVED_NATIVE;

/// Tenant label of requests that matched no tenant route (404s, `/healthz`, `/metrics`).
pub const NO_TENANT: &str = "-";

/// What `/metrics` answers with.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantLabel {
    tenant: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    tenant: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabel {
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginLabel {
    plugin: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    tenant: String,
    limit: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResponseLabels {
    served_by: String,
    response: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabel {
    decision: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric family; cheap to clone (one `Arc`), shared by handlers, bodies and the limiter.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    active_streams: Family<TenantLabel, Gauge>,
    bytes_sent: Family<TenantLabel, Counter>,
    first_byte: HistogramFamily<TenantLabel>,
    sidecar_jobs: Family<KindLabel, Counter>,
    sidecar_errors: Family<CodeLabel, Counter>,
    media_responses: Family<ResponseLabels, Counter>,
    plugin_calls: Family<PluginLabel, Counter>,
    plugin_failures: Family<PluginLabel, Counter>,
    plugin_latency: HistogramFamily<PluginLabel>,
    limiter_rejections: Family<LimitLabels, Counter>,
    limiter_errors: Family<DecisionLabel, Counter>,
    connections: Gauge,
    connections_refused: Counter,
    connections_timed_out: Family<KindLabel, Counter>,
    config_reloads: Family<ResultLabel, Counter>,
    config_last_reload_ok: Gauge,
}

fn latency_histogram() -> Histogram {
    // 1 ms … ~16 s: plugin calls sit at the low end, first bytes of slow extractions high.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Every family registered, all empty.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("streamgate");
        let inner = Inner {
            requests: Family::default(),
            active_streams: Family::default(),
            bytes_sent: Family::default(),
            first_byte: Family::new_with_constructor(latency_histogram),
            sidecar_jobs: Family::default(),
            sidecar_errors: Family::default(),
            media_responses: Family::default(),
            plugin_calls: Family::default(),
            plugin_failures: Family::default(),
            plugin_latency: Family::new_with_constructor(latency_histogram),
            limiter_rejections: Family::default(),
            limiter_errors: Family::default(),
            connections: Gauge::default(),
            connections_refused: Counter::default(),
            connections_timed_out: Family::default(),
            config_reloads: Family::default(),
            config_last_reload_ok: Gauge::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "http_requests",
            "Requests by tenant and status",
            inner.requests.clone(),
        );
        let active = inner.active_streams.clone();
        r.register("active_streams", "Media bodies relaying now", active);
        r.register(
            "bytes_sent",
            "Media bytes relayed",
            inner.bytes_sent.clone(),
        );
        let ttfb = inner.first_byte.clone();
        r.register(
            "time_to_first_byte_seconds",
            "Request to first media byte",
            ttfb,
        );
        let jobs = inner.sidecar_jobs.clone();
        r.register("sidecar_jobs", "Jobs started on the sidecar by kind", jobs);
        let errs = inner.sidecar_errors.clone();
        r.register("sidecar_errors", "Sidecar job errors by code", errs);
        let media = inner.media_responses.clone();
        r.register(
            "media_responses",
            "Media responses by the path that served them and their kind",
            media,
        );
        r.register(
            "plugin_calls",
            "Plugin calls by plugin",
            inner.plugin_calls.clone(),
        );
        let fails = inner.plugin_failures.clone();
        r.register("plugin_failures", "Plugin traps, deadlines, memory", fails);
        let lat = inner.plugin_latency.clone();
        r.register("plugin_latency_seconds", "Plugin call latency", lat);
        let rej = inner.limiter_rejections.clone();
        r.register("limiter_rejections", "Requests refused by a limit", rej);
        let lim = inner.limiter_errors.clone();
        r.register(
            "limiter_errors",
            "Limiter backend failures by decision",
            lim,
        );
        let open = inner.connections.clone();
        r.register("connections", "Client connections open now", open);
        r.register(
            "connections_refused",
            "Connections closed at accept: server.max_connections reached",
            inner.connections_refused.clone(),
        );
        r.register(
            "connections_timed_out",
            "Connections closed by a timeout: header (no whole request head in time) or \
             idle_write (the client took no byte in time)",
            inner.connections_timed_out.clone(),
        );
        r.register(
            "config_reloads",
            "SIGHUP reloads by result: applied, or refused (the previous configuration stays)",
            inner.config_reloads.clone(),
        );
        // 1 from the start: the configuration in force loaded whole (as Prometheus's own).
        inner.config_last_reload_ok.set(1);
        r.register(
            "config_last_reload_successful",
            "Whether the last reload was applied (1) or refused (0)",
            inner.config_last_reload_ok.clone(),
        );
        Metrics {
            inner: Arc::new(Inner { registry, ..inner }),
        }
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.inner.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// One answered request; `tenant` is [`NO_TENANT`] outside the tenant routes.
    pub fn request(&self, tenant: &str, status: u16) {
        let labels = RequestLabels {
            tenant: tenant.to_owned(),
            status,
        };
        self.inner.requests.get_or_create(&labels).inc();
    }

    /// A job started on the sidecar (`stream` or `resolve`).
    pub fn sidecar_job(&self, kind: &str) {
        let kind = kind.to_owned();
        self.inner
            .sidecar_jobs
            .get_or_create(&KindLabel { kind })
            .inc();
    }

    /// A job the sidecar failed, before or after its first byte.
    pub fn sidecar_error(&self, code: &str) {
        let code = code.to_owned();
        self.inner
            .sidecar_errors
            .get_or_create(&CodeLabel { code })
            .inc();
    }

    /// A media response whose head is decided: `served_by` is the metadata's (`native`,
    /// `yt-dlp`; anything else counts as `other`, so a sidecar cannot grow the label set),
    /// `response` one of `whole`, `partial` (206) and `head`.
    pub fn media_response(&self, served_by: &str, response: &'static str) {
        let served_by = match served_by {
            SERVED_NATIVE | "yt-dlp" => served_by,
            _ => "other",
        };
        let labels = ResponseLabels {
            served_by: served_by.to_owned(),
            response: response.to_owned(),
        };
        self.inner.media_responses.get_or_create(&labels).inc();
    }

    /// One plugin call that took `took`; `failed`: a `PluginError` (not a denial).
    pub fn plugin_call(&self, plugin: &str, took: Duration, failed: bool) {
        let label = PluginLabel {
            plugin: plugin.to_owned(),
        };
        let inner = &self.inner;
        inner.plugin_calls.get_or_create(&label).inc();
        let secs = took.as_secs_f64();
        inner.plugin_latency.get_or_create(&label).observe(secs);
        if failed {
            inner.plugin_failures.get_or_create(&label).inc();
        }
    }

    /// A request refused by `limit` (`max_streams`, `max_streams_per_client`, …).
    pub fn limiter_rejection(&self, tenant: &str, limit: &str) {
        let labels = LimitLabels {
            tenant: tenant.to_owned(),
            limit: limit.to_owned(),
        };
        self.inner.limiter_rejections.get_or_create(&labels).inc();
    }

    /// The limiter's backend failed and the request was `deny`-ed or `allow`-ed.
    pub fn limiter_error(&self, decision: &str) {
        let decision = decision.to_owned();
        let labels = DecisionLabel { decision };
        self.inner.limiter_errors.get_or_create(&labels).inc();
    }
}

/// One open client connection, counted in `connections` until it drops.
pub struct ConnectionGuard {
    open: Gauge,
}

impl Metrics {
    /// Counts a connection open until the guard drops.
    pub fn connection(&self) -> ConnectionGuard {
        self.inner.connections.inc();
        ConnectionGuard {
            open: self.inner.connections.clone(),
        }
    }

    /// A connection closed at accept, over the cap.
    pub fn connection_refused(&self) {
        self.inner.connections_refused.inc();
    }

    /// A SIGHUP reload, applied or refused.
    pub fn config_reload(&self, applied: bool) {
        let result = if applied { "applied" } else { "refused" };
        self.inner
            .config_reloads
            .get_or_create(&ResultLabel { result })
            .inc();
        self.inner.config_last_reload_ok.set(applied.into());
    }

    /// A connection closed by a timeout: `header` or `idle_write`.
    pub fn connection_timed_out(&self, kind: &'static str) {
        let kind = kind.to_owned();
        let timed_out = &self.inner.connections_timed_out;
        timed_out.get_or_create(&KindLabel { kind }).inc();
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.open.dec();
    }
}

/// The metrics of one media body, its tenant's series looked up once: the active gauge is
/// raised now and lowered when the recorder drops (with the body, however it ends).
pub struct StreamRecorder {
    active: Gauge,
    bytes_sent: Counter,
    first_byte: Histogram,
    metrics: Metrics,
}

impl Metrics {
    /// A recorder for one stream of `tenant`, counted as active until it drops.
    pub fn stream(&self, tenant: &str) -> StreamRecorder {
        let label = TenantLabel {
            tenant: tenant.to_owned(),
        };
        let inner = &self.inner;
        let active = inner.active_streams.get_or_create(&label).clone();
        active.inc();
        StreamRecorder {
            active,
            bytes_sent: inner.bytes_sent.get_or_create(&label).clone(),
            first_byte: inner.first_byte.get_or_create(&label).clone(),
            metrics: self.clone(),
        }
    }
}

impl StreamRecorder {
    /// The first media byte left, `since` the request arrived.
    pub fn first_byte(&self, since: Duration) {
        self.first_byte.observe(since.as_secs_f64());
    }

    /// `n` more media bytes relayed.
    pub fn bytes(&self, n: u64) {
        self.bytes_sent.inc_by(n);
    }

    /// The job failed after its first byte.
    pub fn sidecar_error(&self, code: &str) {
        self.metrics.sidecar_error(code);
    }
}

impl Drop for StreamRecorder {
    fn drop(&mut self) {
        self.active.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_appear_with_their_labels() {
        let m = Metrics::new();
        m.request("a", 200);
        m.request("a", 200);
        m.request(NO_TENANT, 404);
        m.limiter_error("deny");
        m.media_response("native", "partial");
        m.media_response("yt-dlp", "whole");
        m.media_response("../../etc", "head");
        let stream = m.stream("a");
        stream.bytes(10);
        stream.bytes(5);
        assert!(
            m.encode()
                .contains("streamgate_active_streams{tenant=\"a\"} 1")
        );
        drop(stream);
        let text = m.encode();
        assert!(
            text.contains("streamgate_active_streams{tenant=\"a\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("streamgate_bytes_sent_total{tenant=\"a\"} 15"),
            "{text}"
        );
        assert!(
            text.contains("streamgate_http_requests_total{tenant=\"a\",status=\"200\"} 2"),
            "{text}"
        );
        assert!(text.contains("streamgate_http_requests_total{tenant=\"-\",status=\"404\"} 1"));
        assert!(text.contains("streamgate_limiter_errors_total{decision=\"deny\"} 1"));
        let media = "streamgate_media_responses_total";
        assert!(text.contains(&format!(
            "{media}{{served_by=\"native\",response=\"partial\"}} 1"
        )));
        assert!(text.contains(&format!(
            "{media}{{served_by=\"yt-dlp\",response=\"whole\"}} 1"
        )));
        assert!(text.contains(&format!(
            "{media}{{served_by=\"other\",response=\"head\"}} 1"
        )));
        assert!(text.ends_with("# EOF\n"));
    }
}
