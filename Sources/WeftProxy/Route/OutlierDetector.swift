import WeftConfig

/// Passive outlier detection (Istio's `outlierDetection`), per destination host and
/// endpoint, from the answers the node's proxies get. Pure and value-typed: the directory
/// holds one under its lock; the unit tests drive it with a fake clock (nanoseconds).
///
/// An endpoint is ejected as soon as it reaches `consecutive5xxErrors` 5xx answers in a row
/// (failed connects and resets count as 5xx) or `consecutiveGatewayErrors` 502/503/504 in a
/// row, unless that would eject more than `maxEjectionPercent` of the host's endpoints (at
/// least one may always be ejected, as in Envoy). It stays out for `baseEjectionTime` ×
/// the number of times it was ejected (at most 300 s), then comes back; a success resets its
/// streaks. Endpoints that stayed in for ten base ejection times start counting afresh.
public struct OutlierDetector: Sendable {
    struct Endpoint: Sendable {
        var consecutive5xx = 0
        var consecutiveGateway = 0
        var ejectedUntil: UInt64?
        var ejections = 0
        var lastReturn: UInt64 = 0
    }

    private var hosts: [String: [String: Endpoint]] = [:]

    public init() {}

    static let maxEjection: UInt64 = 300_000_000_000

    /// Records one answer from `endpoint` of `host` (`status` nil: the connection failed or
    /// was reset). Returns true when this answer ejected the endpoint.
    @discardableResult
    public mutating func record(host: String, endpoint: String, status: Int?, policy: OutlierDetection,
                                endpointCount: Int, now: UInt64) -> Bool {
        var e = hosts[host]?[endpoint] ?? Endpoint()
        if let until = e.ejectedUntil, now >= until {
            e.ejectedUntil = nil
            e.lastReturn = until
        }
        switch status {
        case let s? where s < 500:
            e.consecutive5xx = 0
            e.consecutiveGateway = 0
        case let s?:
            e.consecutive5xx += 1
            if [502, 503, 504].contains(s) { e.consecutiveGateway += 1 } else { e.consecutiveGateway = 0 }
        case nil:
            e.consecutive5xx += 1
            e.consecutiveGateway += 1
        }
        var ejected = false
        let tripped = (policy.consecutive5xxErrors > 0 && e.consecutive5xx >= policy.consecutive5xxErrors)
            || (policy.consecutiveGatewayErrors > 0 && e.consecutiveGateway >= policy.consecutiveGatewayErrors)
        if tripped, e.ejectedUntil == nil {
            let allowed = policy.maxEjectionPercent == 0 ? 0 : max(1, policy.maxEjectionPercent * endpointCount / 100)
            if ejectedCount(host: host, now: now) < allowed {
                let base = policy.baseEjectionTime.nanosecondsClamped
                if e.ejections > 0, now &- e.lastReturn > base * 10 { e.ejections = 0 }
                e.ejections += 1
                e.ejectedUntil = now + min(Self.maxEjection, base * UInt64(e.ejections))
                ejected = true
            }
            e.consecutive5xx = 0
            e.consecutiveGateway = 0
        }
        hosts[host, default: [:]][endpoint] = e
        return ejected
    }

    public func isEjected(host: String, endpoint: String, now: UInt64) -> Bool {
        guard let until = hosts[host]?[endpoint]?.ejectedUntil else { return false }
        return now < until
    }

    public func ejectedCount(host: String, now: UInt64) -> Int {
        hosts[host]?.values.filter { ($0.ejectedUntil ?? 0) > now }.count ?? 0
    }

    public func ejected(host: String, now: UInt64) -> [String] {
        (hosts[host] ?? [:]).filter { ($0.value.ejectedUntil ?? 0) > now }.keys.sorted()
    }

    /// The endpoints to balance over: the non-ejected ones, unless fewer than
    /// `minHealthPercent` are left (panic) or none is.
    public static func healthy<T>(_ candidates: [T], ejected: (T) -> Bool, minHealthPercent: Int) -> [T] {
        let healthy = candidates.filter { !ejected($0) }
        if healthy.isEmpty || healthy.count * 100 < minHealthPercent * candidates.count { return candidates }
        return healthy
    }
}
