import Foundation

/// `weft top`: request rate, error rate and latency percentiles per (caller → service) pair,
/// from two scrapes of the agent's Prometheus endpoint. Pure.
public enum TopView {
    public struct Pair: Hashable, Sendable, Comparable {
        public var source: String
        public var destination: String

        public static func < (a: Pair, b: Pair) -> Bool { (a.source, a.destination) < (b.source, b.destination) }
    }

    /// What one scrape says per pair: requests, failed requests (5xx, or no response), and
    /// the duration histogram's cumulative buckets (upper bound in ms → count).
    public struct Sample: Sendable, Equatable {
        public var requests: Double = 0
        public var errors: Double = 0
        public var buckets: [Double: Double] = [:]
    }

    public struct Row: Sendable, Equatable {
        public var pair: Pair
        public var requestsPerSecond: Double
        public var errorRatio: Double
        public var p50: Double?
        public var p99: Double?
    }

    /// Reads the reporter="source" request series of an exposition.
    public static func parse(_ text: String) -> [Pair: Sample] {
        var out: [Pair: Sample] = [:]
        for line in text.split(separator: "\n") where !line.hasPrefix("#") {
            let isCount = line.hasPrefix("istio_requests_total{")
            let isBucket = line.hasPrefix("istio_request_duration_milliseconds_bucket{")
            guard isCount || isBucket, let open = line.firstIndex(of: "{"), let close = line.lastIndex(of: "}") else { continue }
            let labels = Self.labels(line[line.index(after: open)..<close])
            guard labels["reporter"] == "source", let value = Double(line[line.index(after: close)...].trimmingCharacters(in: .whitespaces)) else { continue }
            let pair = Pair(source: "\(labels["source_workload"] ?? "?").\(labels["source_workload_namespace"] ?? "?")",
                            destination: labels["destination_service"] ?? "?")
            if isCount {
                out[pair, default: Sample()].requests += value
                let code = Int(labels["response_code"] ?? "") ?? 0
                if code >= 500 || code == 0 { out[pair, default: Sample()].errors += value }
            } else if let le = labels["le"] {
                let bound = le == "+Inf" ? Double.infinity : Double(le) ?? .infinity
                out[pair, default: Sample()].buckets[bound, default: 0] += value
            }
        }
        return out
    }

    static func labels(_ text: Substring) -> [String: String] {
        var out: [String: String] = [:]
        var i = text.startIndex
        while i < text.endIndex {
            guard let eq = text[i...].firstIndex(of: "=") else { break }
            let key = text[i..<eq].trimmingCharacters(in: CharacterSet(charactersIn: ", "))
            var j = text.index(eq, offsetBy: 2, limitedBy: text.endIndex) ?? text.endIndex  // past ="
            var value = ""
            while j < text.endIndex, text[j] != "\"" {
                if text[j] == "\\", text.index(after: j) < text.endIndex { j = text.index(after: j) }
                value.append(text[j])
                j = text.index(after: j)
            }
            out[key] = value
            i = j < text.endIndex ? text.index(after: j) : j
        }
        return out
    }

    /// Rates over `seconds` between two scrapes; pairs without new requests are left out.
    public static func rows(previous: [Pair: Sample], current: [Pair: Sample], seconds: Double) -> [Row] {
        current.keys.sorted().compactMap { pair in
            let now = current[pair]!, before = previous[pair] ?? Sample()
            let requests = now.requests - before.requests
            guard requests > 0, seconds > 0 else { return nil }
            var delta: [Double: Double] = [:]
            for (bound, count) in now.buckets { delta[bound] = count - (before.buckets[bound] ?? 0) }
            return Row(pair: pair, requestsPerSecond: requests / seconds, errorRatio: (now.errors - before.errors) / requests,
                       p50: quantile(0.5, delta), p99: quantile(0.99, delta))
        }
    }

    /// Prometheus' histogram_quantile: linear within the bucket the rank falls in.
    public static func quantile(_ q: Double, _ cumulative: [Double: Double]) -> Double? {
        let bounds = cumulative.keys.sorted()
        guard let total = bounds.last.flatMap({ cumulative[$0] }), total > 0 else { return nil }
        let rank = q * total
        var lowerBound = 0.0, lowerCount = 0.0
        for b in bounds {
            let c = cumulative[b] ?? 0
            if c >= rank {
                if b.isInfinite { return lowerBound }
                return lowerBound + (b - lowerBound) * (c == lowerCount ? 0 : (rank - lowerCount) / (c - lowerCount))
            }
            lowerBound = b
            lowerCount = c
        }
        return lowerBound
    }

    public static func render(_ rows: [Row], interval: Double, source: String) -> String {
        var table = [["SOURCE", "DESTINATION", "REQ/S", "ERRORS", "P50 MS", "P99 MS"]]
        for r in rows {
            table.append([r.pair.source, r.pair.destination, String(format: "%.1f", r.requestsPerSecond), String(format: "%.1f%%", r.errorRatio * 100),
                          r.p50.map { String(format: "%.1f", $0) } ?? "-", r.p99.map { String(format: "%.1f", $0) } ?? "-"])
        }
        let widths = table[0].indices.map { i in table.map { $0[i].count }.max() ?? 0 }
        let lines = table.map { row in row.enumerated().map { $1.padding(toLength: widths[$0], withPad: " ", startingAt: 0) }.joined(separator: "  ") }
        let header = "weft top — \(source), every \(String(format: "%g", interval)) s" + (rows.isEmpty ? " — no requests in the last interval" : "")
        return ([header, ""] + lines).joined(separator: "\n") + "\n"
    }
}
