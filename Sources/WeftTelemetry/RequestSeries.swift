import Synchronization

extension MeshMetrics {
    /// One request series: Istio's four request metrics for one label set
    /// (`istio_requests_total` and the duration, request-size and response-size histograms),
    /// kept as one block of atomic counters. Recording a request adds to seven of them: no
    /// lock, nothing allocated, no walk over every bucket (each bucket counts only its own
    /// range; the exposition sums them into Prometheus's cumulative `le` buckets). Callers
    /// that see the same labels again keep the series and record into it directly.
    public final class RequestSeries: Sendable {
        /// `name="value",…` as the exposition prints them (escaped once, here).
        let labels: String
        /// [requests] [duration buckets… +Inf] [duration sum, ns] [request-size buckets… +Inf]
        /// [request-size sum] [response-size buckets… +Inf] [response-size sum].
        let cells: InlineArray<46, Atomic<UInt64>>

        static let durationAt = 1
        static let durationSumAt = durationAt + MeshMetrics.durationBuckets.count + 1
        static let requestBytesAt = durationSumAt + 1
        static let requestBytesSumAt = requestBytesAt + MeshMetrics.sizeBuckets.count + 1
        static let responseBytesAt = requestBytesSumAt + 1
        static let responseBytesSumAt = responseBytesAt + MeshMetrics.sizeBuckets.count + 1

        init(labels: [(String, String)]) {
            precondition(Self.responseBytesSumAt == 45, "the cells' layout and their count disagree")
            self.labels = Self.render(labels)
            cells = InlineArray { _ in Atomic(0) }
        }

        func record(durationNanoseconds: UInt64, requestBytes: Int, responseBytes: Int) {
            add(1, at: 0)
            add(1, at: Self.durationAt + Self.bucket(Double(durationNanoseconds) / 1e6, MeshMetrics.durationBuckets))
            add(durationNanoseconds, at: Self.durationSumAt)
            let sent = UInt64(max(requestBytes, 0)), received = UInt64(max(responseBytes, 0))
            add(1, at: Self.requestBytesAt + Self.bucket(Double(sent), MeshMetrics.sizeBuckets))
            add(sent, at: Self.requestBytesSumAt)
            add(1, at: Self.responseBytesAt + Self.bucket(Double(received), MeshMetrics.sizeBuckets))
            add(received, at: Self.responseBytesSumAt)
        }

        @inline(__always)
        private func add(_ n: UInt64, at i: Int) { cells[i].wrappingAdd(n, ordering: .relaxed) }

        func load(_ i: Int) -> UInt64 { cells[i].load(ordering: .relaxed) }

        /// The bucket a value falls in: the first bound at or above it (Prometheus's `le`),
        /// or the +Inf bucket past the last.
        static func bucket(_ value: Double, _ bounds: [Double]) -> Int {
            var i = 0
            while i < bounds.count, bounds[i] < value { i += 1 }
            return i
        }

        /// Label values escaped as the text format asks (backslash, double quote, line feed).
        static func render(_ labels: [(String, String)]) -> String {
            var out = ""
            for (i, (name, value)) in labels.enumerated() {
                if i > 0 { out += "," }
                out += name
                out += "=\""
                for c in value.unicodeScalars {
                    switch c {
                    case "\\": out += "\\\\"
                    case "\"": out += "\\\""
                    case "\n": out += "\\n"
                    default: out.unicodeScalars.append(c)
                    }
                }
                out += "\""
            }
            return out
        }
    }

    /// The exposition of request series: each family once, its HELP and TYPE first; series
    /// in the order of their labels.
    static func exposition(of series: [RequestSeries]) -> String {
        guard !series.isEmpty else { return "" }
        let series = series.sorted { $0.labels < $1.labels }
        var out = "# HELP istio_requests_total Requests, by source, destination and response\n# TYPE istio_requests_total counter\n"
        for s in series { out += "istio_requests_total{\(s.labels)} \(s.load(0))\n" }
        histogram(&out, "istio_request_duration_milliseconds", "Request duration in milliseconds", series, at: RequestSeries.durationAt,
                  bounds: durationBuckets, sumUnit: 1e6)
        histogram(&out, "istio_request_bytes", "Request sizes in bytes (headers and body)", series, at: RequestSeries.requestBytesAt,
                  bounds: sizeBuckets, sumUnit: 1)
        histogram(&out, "istio_response_bytes", "Response sizes in bytes (headers and body)", series, at: RequestSeries.responseBytesAt,
                  bounds: sizeBuckets, sumUnit: 1)
        return out
    }

    /// One histogram family: cumulative `le` buckets summed from the per-range counts (read
    /// once each, so `+Inf` and `_count` agree even while requests are recorded), then
    /// `_sum` (the sum cell over `sumUnit`: nanoseconds to milliseconds) and `_count`.
    private static func histogram(_ out: inout String, _ name: String, _ help: String, _ series: [RequestSeries], at first: Int,
                                  bounds: [Double], sumUnit: Double) {
        out += "# HELP \(name) \(help)\n# TYPE \(name) histogram\n"
        for s in series {
            var total: UInt64 = 0
            for (i, bound) in bounds.enumerated() {
                total &+= s.load(first + i)
                out += "\(name)_bucket{\(s.labels),le=\"\(bound)\"} \(total)\n"
            }
            total &+= s.load(first + bounds.count)
            out += "\(name)_bucket{\(s.labels),le=\"+Inf\"} \(total)\n"
            out += "\(name)_sum{\(s.labels)} \(Double(s.load(first + bounds.count + 1)) / sumUnit)\n"
            out += "\(name)_count{\(s.labels)} \(total)\n"
        }
    }
}
