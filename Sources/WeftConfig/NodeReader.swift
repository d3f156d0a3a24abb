import Yams

/// Walks a YAML node tree strictly, collecting diagnostics instead of stopping at the first:
/// unknown fields, wrong types and bad values are all reported with file:line:column.
/// Istio fields that Weft does not implement are named as such, never silently ignored.
final class NodeReader {
    let file: String
    private(set) var diagnostics: [Diagnostic] = []

    init(file: String) {
        self.file = file
    }

    func location(_ node: Node) -> SourceLocation {
        SourceLocation(file: file, line: node.mark?.line ?? 0, column: node.mark?.column ?? 0)
    }

    func error(_ node: Node, _ message: String, why: String? = nil) {
        diagnostics.append(Diagnostic(.error, at: location(node), message, why: why))
    }

    func warning(_ node: Node, _ message: String, why: String) {
        diagnostics.append(Diagnostic(.warning, at: location(node), message, why: why))
    }

    /// The fields of a mapping, checked against what `what` allows.
    func fields(_ node: Node, _ what: String, allowed: [String], unsupported: [String: String] = [:],
                ignored: Set<String> = []) -> [String: Node]? {
        guard let mapping = node.mapping else {
            error(node, "\(what) must be a mapping")
            return nil
        }
        var out: [String: Node] = [:]
        for (keyNode, value) in mapping {
            guard let key = keyNode.scalar?.string else {
                error(keyNode, "\(what): keys must be strings")
                continue
            }
            if out[key] != nil {
                error(keyNode, "\(what): duplicate field '\(key)'")
                continue
            }
            if let reason = unsupported[key] {
                error(keyNode, "\(what): field '\(key)' is not supported by Weft: \(reason)")
                continue
            }
            if ignored.contains(key) { continue }
            guard allowed.contains(key) else {
                error(keyNode, "\(what): unknown field '\(key)'" + Self.suggestion(key, allowed),
                      why: "a misspelt field would otherwise be silently ignored")
                continue
            }
            out[key] = value
        }
        return out
    }

    func string(_ node: Node, _ what: String) -> String? {
        guard let s = node.scalar, node.tag.description != "tag:yaml.org,2002:null" else {
            error(node, "\(what) must be a string")
            return nil
        }
        return s.string
    }

    func int(_ node: Node, _ what: String, _ range: ClosedRange<Int>) -> Int? {
        guard let s = node.scalar?.string, let v = Int(s) else {
            error(node, "\(what) must be an integer")
            return nil
        }
        guard range.contains(v) else {
            error(node, "\(what) must be between \(range.lowerBound) and \(range.upperBound), got \(v)")
            return nil
        }
        return v
    }

    func double(_ node: Node, _ what: String, _ range: ClosedRange<Double>) -> Double? {
        guard let s = node.scalar?.string, let v = Double(s), v.isFinite else {
            error(node, "\(what) must be a number")
            return nil
        }
        guard range.contains(v) else {
            error(node, "\(what) must be between \(range.lowerBound) and \(range.upperBound), got \(s)")
            return nil
        }
        return v
    }

    func bool(_ node: Node, _ what: String) -> Bool? {
        switch node.scalar?.string.lowercased() {
        case "true"?: return true
        case "false"?: return false
        default:
            error(node, "\(what) must be true or false")
            return nil
        }
    }

    func list(_ node: Node, _ what: String) -> [Node]? {
        guard let seq = node.sequence else {
            error(node, "\(what) must be a list")
            return nil
        }
        return Array(seq)
    }

    func stringList(_ node: Node, _ what: String) -> [String]? {
        list(node, what)?.enumerated().compactMap { string($1, "\(what)[\($0)]") }
    }

    func stringMap(_ node: Node, _ what: String) -> [String: String]? {
        guard let mapping = node.mapping else {
            error(node, "\(what) must be a mapping of strings")
            return nil
        }
        var out: [String: String] = [:]
        for (k, v) in mapping {
            guard let key = k.scalar?.string, let value = v.scalar?.string else {
                error(k, "\(what): keys and values must be strings")
                continue
            }
            out[key] = value
        }
        return out
    }

    /// Istio durations: "10s", "1.5s", "250ms", "1m", "1h", "100us".
    func duration(_ node: Node, _ what: String) -> Duration? {
        guard let text = node.scalar?.string, let d = Self.parseDuration(text) else {
            error(node, "\(what) must be a duration such as 1.5s, 250ms, 1m or 1h")
            return nil
        }
        return d
    }

    static func parseDuration(_ text: String) -> Duration? {
        let units: [(String, Double)] = [("ms", 1e-3), ("us", 1e-6), ("µs", 1e-6), ("ns", 1e-9), ("h", 3600), ("m", 60), ("s", 1)]
        for (suffix, scale) in units where text.hasSuffix(suffix) {
            let number = text.dropLast(suffix.count)
            guard !number.isEmpty, number.allSatisfy({ $0.isASCII && ($0.isNumber || $0 == ".") }), let v = Double(number), v >= 0 else { return nil }
            // At most ~31 years: beyond, the nanoseconds do not fit an Int64 (converting
            // them trapped — a config file could crash the agent; found by weft-fuzz).
            let nanos = (v * scale * 1e9).rounded()
            guard nanos.isFinite, nanos <= 1e18 else { return nil }
            return .nanoseconds(Int64(nanos))
        }
        return nil
    }

    static func suggestion(_ key: String, _ allowed: [String]) -> String {
        let close = allowed.min { distance(key.lowercased(), $0.lowercased()) < distance(key.lowercased(), $1.lowercased()) }
        if let close, distance(key.lowercased(), close.lowercased()) <= 2 { return " (did you mean '\(close)'?)" }
        return " (known: \(allowed.joined(separator: ", ")))"
    }

    static func distance(_ a: String, _ b: String) -> Int {
        let a = Array(a), b = Array(b)
        var row = Array(0...b.count)
        for i in 1...max(a.count, 1) where !a.isEmpty {
            var prev = row[0]
            row[0] = i
            for j in stride(from: 1, through: b.count, by: 1) {
                let cur = row[j]
                row[j] = min(row[j] + 1, row[j - 1] + 1, prev + (a[i - 1] == b[j - 1] ? 0 : 1))
                prev = cur
            }
        }
        return row[b.count]
    }
}

/// Istio-style durations ("90s", "2m", "24h", "250ms") for command-line flags too.
public enum IstioDuration {
    public static func parse(_ text: String) -> Duration? { NodeReader.parseDuration(text) }

    /// The way Istio config writes it: 300ms, 2s, 1m30s.
    public static func format(_ d: Duration) -> String {
        let ms = d.components.seconds * 1000 + d.components.attoseconds / 1_000_000_000_000_000
        if ms % 1000 != 0 || ms < 1000 { return "\(ms)ms" }
        let s = ms / 1000
        if s % 60 != 0 || s < 60 { return s >= 60 ? "\(s / 60)m\(s % 60)s" : "\(s)s" }
        return s % 3600 == 0 ? "\(s / 3600)h" : "\(s / 60)m"
    }
}
