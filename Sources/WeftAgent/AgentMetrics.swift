import Foundation
import Prometheus
import WeftCore
import WeftTelemetry

/// Weft's own metrics beside Istio's standard ones, brought up to date at each scrape from
/// the agent's state: per-workload counters (retries, budget exhaustion, rate limiting,
/// protocol detection, DNS, tunnel and policy refusals), per-service breaker state, ejected
/// and unhealthy endpoints, the config version and certificate expiry.
actor AgentMetrics {
    let metrics: MeshMetrics
    private var registry: PrometheusCollectorRegistry { metrics.registry }
    /// Last value pushed per (metric, labels): counters grow by the difference.
    private var pushed: [String: Int] = [:]
    private var counters: [String: Counter] = [:]
    private var gauges: [String: Gauge] = [:]

    init(metrics: MeshMetrics) {
        self.metrics = metrics
    }

    /// (metric base name, help, labels extra to the workload's, the value).
    static func workloadCounters(_ c: TrafficCounters) -> [(String, String, [(String, String)], Int)] {
        [
            ("weft_requests_retried", "Retries attempted by the proxy", [], c.httpRetries),
            ("weft_retry_budget_exhausted", "Retries not attempted because the retry budget was spent", [], c.httpRetriesDenied),
            ("weft_rate_limited_requests", "Requests answered 429 by a RateLimitPolicy", [], c.httpRateLimited),
            ("weft_protocol_detected", "Outbound connections by detected protocol", [("protocol", "http1")], c.protocolHTTP1),
            ("weft_protocol_detected", "Outbound connections by detected protocol", [("protocol", "h2c")], c.protocolHTTP2),
            ("weft_protocol_detected", "Outbound connections by detected protocol", [("protocol", "tls")], c.protocolTLS),
            ("weft_protocol_detected", "Outbound connections by detected protocol", [("protocol", "opaque")], c.protocolOpaque),
            ("weft_protocol_detected", "Outbound connections by detected protocol", [("protocol", "server-first")], c.serverFirst),
            ("weft_dns_queries", "DNS queries by outcome", [("outcome", "answered")], c.dnsAnswered),
            ("weft_dns_queries", "DNS queries by outcome", [("outcome", "forwarded")], c.dnsForwarded),
            ("weft_dns_queries", "DNS queries by outcome", [("outcome", "malformed")], c.dnsMalformed),
            ("weft_tunnel_connections", "mTLS tunnel connections accepted", [], c.tunnelConnections),
            ("weft_tunnel_refused", "mTLS tunnel connections refused (handshake or identity)", [], c.tunnelRefused),
            ("weft_plaintext_refused", "Plaintext connections refused by PeerAuthentication STRICT", [], c.plaintextRefused),
            ("weft_authorization_denied", "Requests or connections denied by AuthorizationPolicy", [], c.authzDenied),
            ("weft_connection_errors", "Connections refused or failed by the proxy", [], c.connectionErrors),
            ("weft_connections_over_limit", "Connections refused at the per-workload connection limit", [], c.connectionsOverLimit),
            ("weft_trace_context_dropped", "Outbound requests without trace context made while serving a traced request", [],
             c.traceContextDropped),
        ] + c.egress.sorted { $0.key < $1.key }.map { key, value in
            let parts = key.split(separator: "/").map(String.init)
            return ("weft_egress_flows", "New flows leaving the netns outside the mesh (TCP outside the registry, every non-TCP flow), by verdict",
                    [("protocol", parts.first ?? key), ("verdict", parts.count > 1 ? parts[1] : "")], value)
        }
    }

    /// Brings every series up to date; returns the exposition.
    func scrape(workloads: [WorkloadStatus], services: [ServiceStatus], configVersion: Int,
                certificates: [CertificateStatus], controlConnected: Bool?) -> String {
        for w in workloads {
            let base = [("workload", w.spec.name), ("workload_namespace", w.spec.namespace.rawValue)]
            for (name, help, extra, value) in Self.workloadCounters(w.counters) {
                push(name, help, base + extra, value)
            }
        }
        let phases = ["closed", "open", "half-open"]
        for s in services {
            let labels = [("destination_service", s.key.fqdn)]
            if let phase = s.breaker {
                for p in phases {
                    gauge("weft_circuit_breaker_state", "1 for the circuit breaker's current state", labels + [("state", p)]).set(to: p == phase ? 1.0 : 0.0)
                }
            }
            gauge("weft_endpoints", "Endpoints of a service", labels).set(to: Double(s.endpoints.count))
            gauge("weft_outlier_ejected_endpoints", "Endpoints ejected by outlier detection", labels).set(to: Double(s.ejected.count))
            gauge("weft_unhealthy_endpoints", "Endpoints failing their active health check", labels).set(to: Double(s.unhealthy.count))
        }
        gauge("weft_config_version", "Version of the config in force", []).set(to: Double(configVersion))
        gauge("weft_workloads", "Workloads attached to this agent", []).set(to: Double(workloads.count))
        if let controlConnected {
            gauge("weft_control_plane_connected", "1 while the agent follows its control plane", []).set(to: controlConnected ? 1.0 : 0.0)
        }
        for c in certificates {
            gauge("weft_certificate_expiry_timestamp_seconds", "When a workload's certificate expires (Unix time)",
                  [("workload", c.workload), ("identity", c.identity)]).set(to: c.notAfter.timeIntervalSince1970)
        }
        return metrics.exposition()
    }

    private static func key(_ name: String, _ labels: [(String, String)]) -> String {
        name + "{" + labels.map { "\($0.0)=\($0.1)" }.joined(separator: ",") + "}"
    }

    private func push(_ name: String, _ help: String, _ labels: [(String, String)], _ value: Int) {
        let k = Self.key(name, labels)
        let counter = counters[k] ?? registry.makeCounter(descriptor: Metric.name(name, "total", help), labels: labels)
        counters[k] = counter
        let last = pushed[k] ?? 0
        // A workload attached again under the same name starts from zero.
        let delta = value >= last ? value - last : value
        if delta > 0 { counter.increment(by: Int64(delta)) }
        pushed[k] = value
    }

    private func gauge(_ name: String, _ help: String, _ labels: [(String, String)]) -> Gauge {
        let k = Self.key(name, labels)
        if let g = gauges[k] { return g }
        let parts = name.split(separator: "_")
        let g = registry.makeGauge(descriptor: MetricNameDescriptor(metricName: parts.dropLast().joined(separator: "_"),
                                                                     unitName: String(parts.last ?? ""), helpText: help), labels: labels)
        gauges[k] = g
        return g
    }
}
