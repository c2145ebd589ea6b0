//! Prometheus metrics, written out by hand in the text exposition format (version 0.0.4): a
//! few counters and histograms do not justify a metrics framework.
//!
//! Requests are labelled by route *template* (`/api/products/{id}`), never by the raw path, so
//! the number of series stays fixed whatever clients send.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;

/// Upper bounds (seconds) of the request-latency buckets: from a cached asset to a search
/// waiting behind a full queue.
const LATENCY_BUCKETS: [f64; 14] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
/// Upper bounds of the encoder batch-size buckets.
const BATCH_BUCKETS: [f64; 7] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];

#[derive(Debug, Clone)]
struct Histogram {
    bounds: &'static [f64],
    /// Per bucket (not cumulative); cumulated when written out.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram { bounds, counts: vec![0; bounds.len()], sum: 0.0, count: 0 }
    }

    fn observe(&mut self, value: f64) {
        if let Some(i) = self.bounds.iter().position(|&b| value <= b) {
            self.counts[i] += 1;
        }
        self.sum += value;
        self.count += 1;
    }

    fn write(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (bound, n) in self.bounds.iter().zip(&self.counts) {
            cumulative += n;
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", self.count);
        let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

/// (route template, method, status code)
type RequestKey = (String, String, u16);

/// The server's metrics. Cheap to update from any thread.
pub struct Metrics {
    requests: Mutex<BTreeMap<RequestKey, u64>>,
    latency: Mutex<BTreeMap<String, Histogram>>,
    encode_seconds: Mutex<Histogram>,
    batch_size: Mutex<Histogram>,
    rejected_busy: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Mutex::default(),
            latency: Mutex::default(),
            encode_seconds: Mutex::new(Histogram::new(&LATENCY_BUCKETS)),
            batch_size: Mutex::new(Histogram::new(&BATCH_BUCKETS)),
            rejected_busy: AtomicU64::new(0),
        }
    }
}

/// Gauges read at scrape time rather than tracked.
pub struct Gauges {
    pub catalog_products: usize,
    /// Bytes the embedded vector index holds (0 with Qdrant).
    pub index_memory_bytes: usize,
    /// Graph entries of removed or replaced products, until the graph is rebuilt.
    pub index_dead_entries: usize,
    /// `Some` when the search graph answers: its recall@10 measured on its own products.
    pub index_graph_recall: Option<f32>,
    pub queue_waiting: usize,
    pub queue_capacity: usize,
    pub workers: usize,
}

impl Metrics {
    pub fn observe_request(&self, route: &str, method: &str, status: u16, elapsed: Duration) {
        if let Ok(mut requests) = self.requests.lock() {
            *requests.entry((route.to_string(), method.to_string(), status)).or_default() += 1;
        }
        if let Ok(mut latency) = self.latency.lock() {
            latency.entry(route.to_string()).or_insert_with(|| Histogram::new(&LATENCY_BUCKETS)).observe(elapsed.as_secs_f64());
        }
        if status == 503 {
            self.rejected_busy.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// One encoder call on a batch of `batch` photos.
    pub fn observe_encode(&self, batch: usize, elapsed: Duration) {
        if let Ok(mut h) = self.encode_seconds.lock() {
            h.observe(elapsed.as_secs_f64());
        }
        if let Ok(mut h) = self.batch_size.lock() {
            h.observe(batch as f64);
        }
    }

    /// The exposition text.
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::new();
        out.push_str("# HELP lookalike_http_requests_total HTTP requests by route template, method and status.\n");
        out.push_str("# TYPE lookalike_http_requests_total counter\n");
        if let Ok(requests) = self.requests.lock() {
            for ((route, method, status), n) in requests.iter() {
                let _ = writeln!(out, "lookalike_http_requests_total{{route=\"{}\",method=\"{method}\",status=\"{status}\"}} {n}", escape(route));
            }
        }
        out.push_str("# HELP lookalike_http_request_duration_seconds Time from request to response headers, by route template.\n");
        out.push_str("# TYPE lookalike_http_request_duration_seconds histogram\n");
        if let Ok(latency) = self.latency.lock() {
            for (route, h) in latency.iter() {
                h.write(&mut out, "lookalike_http_request_duration_seconds", &format!("route=\"{}\"", escape(route)));
            }
        }
        out.push_str("# HELP lookalike_encoder_batch_duration_seconds Time of one encoder (model inference) call.\n");
        out.push_str("# TYPE lookalike_encoder_batch_duration_seconds histogram\n");
        if let Ok(h) = self.encode_seconds.lock() {
            h.write(&mut out, "lookalike_encoder_batch_duration_seconds", "");
        }
        out.push_str("# HELP lookalike_encoder_batch_size Photos encoded per encoder call.\n");
        out.push_str("# TYPE lookalike_encoder_batch_size histogram\n");
        if let Ok(h) = self.batch_size.lock() {
            h.write(&mut out, "lookalike_encoder_batch_size", "");
        }
        let gauge = |out: &mut String, name: &str, help: &str, kind: &str, value: f64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
        };
        gauge(
            &mut out,
            "lookalike_encoder_rejected_total",
            "Requests refused with 503 because the encoder queue was full.",
            "counter",
            self.rejected_busy.load(Ordering::Relaxed) as f64,
        );
        gauge(&mut out, "lookalike_encoder_queue_waiting", "Photos waiting for an encoder worker.", "gauge", gauges.queue_waiting as f64);
        gauge(&mut out, "lookalike_encoder_queue_capacity", "Photos that may wait before requests are refused.", "gauge", gauges.queue_capacity as f64);
        gauge(&mut out, "lookalike_encoder_workers", "Encoder worker threads.", "gauge", gauges.workers as f64);
        gauge(&mut out, "lookalike_catalog_products", "Searchable products in the catalog.", "gauge", gauges.catalog_products as f64);
        gauge(&mut out, "lookalike_index_memory_bytes", "Bytes the embedded vector index holds (0 with a Qdrant store).", "gauge", gauges.index_memory_bytes as f64);
        gauge(
            &mut out,
            "lookalike_index_dead_entries",
            "Search graph entries of removed or replaced products; the graph is rebuilt once they reach a quarter of the live ones.",
            "gauge",
            gauges.index_dead_entries as f64,
        );
        gauge(
            &mut out,
            "lookalike_index_graph",
            "1 when the search graph answers searches, 0 for the exact scan (or a Qdrant store).",
            "gauge",
            f64::from(u8::from(gauges.index_graph_recall.is_some())),
        );
        if let Some(recall) = gauges.index_graph_recall {
            gauge(
                &mut out,
                "lookalike_index_recall_at_10",
                "The search graph's recall@10 against the exact scan, measured on its own products when it was built.",
                "gauge",
                f64::from(recall),
            );
        }
        out
    }
}

fn escape(label: &str) -> String {
    label.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Middleware: counts every request and times it, labelled by the route that matched.
pub async fn track(State(metrics): State<Arc<Metrics>>, request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string()).unwrap_or_else(|| "unmatched".to_string());
    let method = request.method().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    metrics.observe_request(&route, &method, response.status().as_u16(), started.elapsed());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        m.observe_request("/a", "GET", 200, Duration::from_millis(3));
        m.observe_request("/a", "GET", 200, Duration::from_millis(30));
        m.observe_request("/a", "GET", 503, Duration::from_secs(100));
        let text = m.render(&Gauges {
            catalog_products: 7,
            index_memory_bytes: 35840,
            index_dead_entries: 2,
            index_graph_recall: Some(0.995),
            queue_waiting: 0,
            queue_capacity: 4,
            workers: 1,
        });
        assert!(text.contains("lookalike_http_requests_total{route=\"/a\",method=\"GET\",status=\"200\"} 2"), "{text}");
        assert!(text.contains("lookalike_http_request_duration_seconds_bucket{route=\"/a\",le=\"0.005\"} 1"), "{text}");
        assert!(text.contains("lookalike_http_request_duration_seconds_bucket{route=\"/a\",le=\"0.05\"} 2"), "{text}");
        assert!(text.contains("lookalike_http_request_duration_seconds_bucket{route=\"/a\",le=\"+Inf\"} 3"), "{text}");
        assert!(text.contains("lookalike_encoder_rejected_total 1"), "{text}");
        assert!(text.contains("lookalike_catalog_products 7"), "{text}");
        assert!(text.contains("lookalike_index_memory_bytes 35840"), "{text}");
        assert!(text.contains("lookalike_index_dead_entries 2"), "{text}");
        assert!(text.contains("lookalike_index_graph 1") && text.contains("lookalike_index_recall_at_10 0.995"), "{text}");
    }
}
