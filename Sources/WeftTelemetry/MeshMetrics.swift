import Prometheus
import Synchronization

/// Istio's standard metrics for the whole agent (every workload proxy records here), in
/// the Prometheus exposition format (swift-prometheus's registry; the request series are
/// Weft's own blocks of atomic counters: see RequestSeries).
///
/// Requests: `istio_requests_total`, `istio_request_duration_milliseconds`,
/// `istio_request_bytes`, `istio_response_bytes`. TCP: `istio_tcp_connections_opened_total`,
/// `istio_tcp_connections_closed_total`, `istio_tcp_sent_bytes_total`,
/// `istio_tcp_received_bytes_total`. Label sets are bounded (`maxSeries` each for requests
/// and TCP): beyond it, new combinations are counted under labels collapsed to "overflow"
/// and `weft_metrics_series_overflow_total` says how often.
public final class MeshMetrics: Sendable {
    public let registry: PrometheusCollectorRegistry
    public let maxSeries: Int

    /// Istio's default buckets.
    static let durationBuckets: [Double] = [0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000, 1800000, 3600000]
    static let sizeBuckets: [Double] = [1, 10, 100, 1000, 10000, 100000, 1000000, 10000000, 100000000, 1000000000]

    /// One TCP series' counters; a connection keeps it and counts into it.
    public final class TCPSeries: Sendable {
        let opened: Counter
        let closed: Counter
        let sent: Counter
        let received: Counter

        init(opened: Counter, closed: Counter, sent: Counter, received: Counter) {
            self.opened = opened
            self.closed = closed
            self.sent = sent
            self.received = received
        }

        /// Bytes the reporting proxy sent to / received from the peer that opened the connection.
        public func add(sent s: Int, received r: Int) {
            if s > 0 { sent.increment(by: Int64(s)) }
            if r > 0 { received.increment(by: Int64(r)) }
        }

        public func close() { closed.increment() }
    }

    private let requests = Mutex<[MeshLabels: RequestSeries]>([:])
    private let tcp = Mutex<[MeshLabels: TCPSeries]>([:])
    private let overflow: Counter

    public init(registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry(), maxSeries: Int = 5000) {
        self.registry = registry
        self.maxSeries = maxSeries
        overflow = registry.makeCounter(descriptor: Metric.name("weft_metrics_series_overflow", "total",
                                                                "Series not created because the label-set bound was reached (counted under overflow labels)"))
    }

    /// One finished request (or one answered by the mesh itself).
    public func recordRequest(_ labels: MeshLabels, durationMilliseconds: Double, requestBytes: Int, responseBytes: Int) {
        record(requestSeries(labels), durationMilliseconds: durationMilliseconds, requestBytes: requestBytes, responseBytes: responseBytes)
    }

    public func record(_ series: RequestSeries, durationMilliseconds: Double, requestBytes: Int, responseBytes: Int) {
        // Any Double in: not finite or negative counts as 0, past Int64 as Int64's most.
        let nanoseconds = durationMilliseconds.isFinite ? min(max(0, (durationMilliseconds * 1e6).rounded()), 9.2e18) : 0
        series.record(durationNanoseconds: UInt64(nanoseconds), requestBytes: requestBytes, responseBytes: responseBytes)
    }

    public func record(_ series: RequestSeries, durationNanoseconds: Int64, requestBytes: Int, responseBytes: Int) {
        series.record(durationNanoseconds: UInt64(max(0, durationNanoseconds)), requestBytes: requestBytes, responseBytes: responseBytes)
    }

    /// The series of `labels` (made on first use, bounded).
    public func requestSeries(_ labels: MeshLabels) -> RequestSeries {
        let series = requests.withLock { map in
            bounded(&map, labels) { key in RequestSeries(labels: key.prometheus(withResponse: true)) }
        }
        return series
    }

    /// A TCP connection opened: counts it and returns the series to count its bytes and
    /// its close into.
    public func tcpOpened(_ labels: MeshLabels) -> TCPSeries {
        let series = tcp.withLock { map in
            bounded(&map, labels) { key in
                let l = key.prometheus(withResponse: false)
                return TCPSeries(
                    opened: registry.makeCounter(descriptor: Metric.name("istio_tcp_connections_opened", "total", "TCP connections opened"), labels: l),
                    closed: registry.makeCounter(descriptor: Metric.name("istio_tcp_connections_closed", "total", "TCP connections closed"), labels: l),
                    sent: registry.makeCounter(descriptor: Metric.name("istio_tcp_sent_bytes", "total",
                                                                       "Bytes sent to the peer that opened the connection (responses)"), labels: l),
                    received: registry.makeCounter(descriptor: Metric.name("istio_tcp_received_bytes", "total",
                                                                           "Bytes received from the peer that opened the connection (requests)"), labels: l))
            }
        }
        series.opened.increment()
        return series
    }

    /// The series of `labels`, made on first use; past `maxSeries`, the overflow series.
    private func bounded<S>(_ map: inout [MeshLabels: S], _ labels: MeshLabels, make: (MeshLabels) -> S) -> S {
        if let s = map[labels] { return s }
        var key = labels
        if map.count >= maxSeries {
            overflow.increment()
            key = labels.overflowed
            if let s = map[key] { return s }
        }
        let s = make(key)
        map[key] = s
        return s
    }

    /// How many label sets exist (requests, TCP).
    public var seriesCount: (requests: Int, tcp: Int) {
        (requests.withLock { $0.count }, tcp.withLock { $0.count })
    }

    /// The exposition: whatever was registered, then the request series.
    public func exposition() -> String {
        registry.emitToString() + Self.exposition(of: requests.withLock { Array($0.values) })
    }
}

/// Metric names with their help text (one place, so a name always has the same help: the
/// registry insists).
public enum Metric {
    public static func name(_ base: String, _ unit: String, _ help: String) -> MetricNameDescriptor {
        MetricNameDescriptor(metricName: base, unitName: unit, helpText: help)
    }
}
