import NIOHTTP1

/// Deadline propagation. A caller's remaining time arrives as `x-weft-expected-timeout-ms`
/// (set by the mesh on every request it forwards with a timeout, for apps that pass request
/// headers on, as Envoy's x-envoy-expected-rq-timeout-ms) or as gRPC's `grpc-timeout`; the
/// request then never waits longer than that, whatever the route's own `timeout`. Pure.
public enum Deadline {
    public static let header = "x-weft-expected-timeout-ms"

    /// The timeout in force for a request: the shorter of the route's and the caller's.
    public static func effective(route: Duration?, headers: HTTPHeaders) -> Duration? {
        let caller = fromHeaders(headers)
        switch (route, caller) {
        case let (r?, c?): return min(r, c)
        case let (r?, nil): return r
        case let (nil, c?): return c
        case (nil, nil): return nil
        }
    }

    static func fromHeaders(_ headers: HTTPHeaders) -> Duration? {
        if let text = headers.first(name: header), let ms = Int64(text.trimmingCharacters(in: .whitespaces)), ms > 0 {
            return .milliseconds(ms)
        }
        if let text = headers.first(name: "grpc-timeout") { return grpcTimeout(text) }
        return nil
    }

    /// gRPC's TimeoutValue TimeoutUnit: at most 8 digits, then H, M, S, m, u or n.
    static func grpcTimeout(_ text: String) -> Duration? {
        guard let unit = text.last, text.count >= 2, text.count <= 9, let value = Int64(text.dropLast()), value > 0 else { return nil }
        switch unit {
        case "H": return .seconds(value * 3600)
        case "M": return .seconds(value * 60)
        case "S": return .seconds(value)
        case "m": return .milliseconds(value)
        case "u": return .microseconds(value)
        case "n": return .nanoseconds(value)
        default: return nil
        }
    }

    static func milliseconds(_ d: Duration) -> Int64 {
        d.components.seconds * 1000 + d.components.attoseconds / 1_000_000_000_000_000
    }
}
