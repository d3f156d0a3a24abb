import NIOCore
import NIOHTTP1
import WeftConfig

/// Why an attempt failed, as far as retrying is concerned.
public enum AttemptFailure: Equatable, Sendable {
    /// The upstream connection could not be made: nothing reached the upstream.
    case connectFailure
    /// HTTP/2 REFUSED_STREAM: the upstream guarantees it did not process the request.
    case refusedStream
    /// The upstream closed or reset before a response head.
    case reset
    /// No response head within `perTryTimeout`.
    case perTryTimeout
    /// A response head with this status (and gRPC status, for trailers-only replies).
    case status(Int, grpc: Int?)
}

/// A route's `retries`, as decisions. Pure: the table tests pin Istio/Envoy's `retryOn`
/// semantics and the idempotency rule.
public struct RetryPolicy: Equatable, Sendable {
    public var attempts: Int
    public var perTryTimeout: Duration?
    public var retryOn: Set<String>
    public var statusCodes: Set<Int>

    public init(_ r: HTTPRetry) {
        attempts = r.attempts
        perTryTimeout = r.perTryTimeout
        retryOn = Set(r.retryOn.filter { Int($0) == nil })
        statusCodes = Set(r.retryOn.compactMap { Int($0) })
    }

    static let grpcCodes: [String: Int] = ["cancelled": 1, "deadline-exceeded": 4, "resource-exhausted": 8, "internal": 13, "unavailable": 14]

    /// Methods whose repetition has no extra effect (RFC 9110 §9.2.2).
    public static func isIdempotent(_ method: HTTPMethod) -> Bool {
        switch method {
        case .GET, .HEAD, .OPTIONS, .TRACE, .PUT, .DELETE: return true
        default: return false
        }
    }

    /// Whether `failure` is one this route retries, for a request of `method`. A request
    /// that is not idempotent is retried only when the upstream cannot have acted on it
    /// (the connection failed, or HTTP/2 refused the stream): no double charges.
    public func retries(_ failure: AttemptFailure, method: HTTPMethod, nonIdempotentOptIn: Bool = false) -> Bool {
        let on = retryOn
        let safeToRepeat: Bool
        let matches: Bool
        switch failure {
        case .connectFailure:
            safeToRepeat = true
            matches = !on.isDisjoint(with: ["connect-failure", "5xx", "reset"])
        case .refusedStream:
            safeToRepeat = true
            matches = !on.isDisjoint(with: ["refused-stream", "5xx"])
        case .reset:
            safeToRepeat = Self.isIdempotent(method)
            matches = !on.isDisjoint(with: ["reset", "5xx"])
        case .perTryTimeout:
            safeToRepeat = Self.isIdempotent(method)
            matches = !on.isDisjoint(with: ["reset", "5xx", "gateway-error"])
        case .status(let code, let grpc):
            safeToRepeat = Self.isIdempotent(method)
            var hit = statusCodes.contains(code)
            if on.contains("5xx"), code >= 500 { hit = true }
            if on.contains("gateway-error"), [502, 503, 504].contains(code) { hit = true }
            if on.contains("retriable-4xx"), code == 409 { hit = true }
            if let grpc, grpc != 0 {
                for (name, value) in Self.grpcCodes where value == grpc && on.contains(name) { hit = true }
            }
            matches = hit
        }
        return matches && (safeToRepeat || nonIdempotentOptIn)
    }

    /// Exponential backoff with full jitter (Envoy's defaults: 25 ms base, 250 ms cap):
    /// before retry `n` (1-based), a uniform wait in [0, min(cap, base × 2^(n-1))).
    public static func backoff(retry n: Int, draw: Double) -> TimeAmount {
        let base = 25_000_000.0, cap = 250_000_000.0
        let ceiling = min(cap, base * Double(1 << min(max(n - 1, 0), 10)))
        return .nanoseconds(Int64(ceiling * draw))
    }
}

/// Retry budgets: retries to a service are capped at a fraction of the requests sent to it
/// over a sliding window, plus a small floor so a lightly used service can still retry.
/// With the `x-weft-retries-exhausted` response header (a hop that gave up says so, and the
/// hops above it do not retry that answer), this keeps a chain of meshed services from
/// multiplying retries at every level. One per workload proxy; loop-confined.
public final class RetryBudget {
    public struct Settings: Sendable, Equatable {
        /// Retries allowed per request sent, over the window (0.2: 20%).
        public var ratio: Double
        /// Retries per second always allowed, whatever the request rate.
        public var minPerSecond: Double
        public var windowSeconds: Int
        /// Off: every configured retry is attempted (naive retries, for comparison).
        public var enabled: Bool

        public init(ratio: Double = 0.2, minPerSecond: Double = 3, windowSeconds: Int = 10, enabled: Bool = true) {
            self.ratio = ratio
            self.minPerSecond = minPerSecond
            self.windowSeconds = windowSeconds
            self.enabled = enabled
        }
    }

    private struct Window {
        var second: Int64 = 0
        var requests: [Int]
        var retries: [Int]
    }

    public let settings: Settings
    private var windows: [String: Window] = [:]

    public init(_ settings: Settings) { self.settings = settings }

    /// The key's window moved on to `now` (buckets of elapsed seconds cleared).
    private func advance(_ key: String, now: Int64) -> Window {
        let n = settings.windowSeconds
        var w = windows[key] ?? Window(second: now, requests: Array(repeating: 0, count: n), retries: Array(repeating: 0, count: n))
        if now - w.second >= Int64(n) {
            w.requests = Array(repeating: 0, count: n)
            w.retries = Array(repeating: 0, count: n)
        } else {
            var s = w.second
            while s < now {
                s += 1
                let i = Int(s % Int64(n))
                w.requests[i] = 0
                w.retries[i] = 0
            }
        }
        w.second = now
        return w
    }

    /// A first attempt to `key` (a service), at `now` seconds.
    public func recordRequest(_ key: String, now: Int64) {
        var w = advance(key, now: now)
        w.requests[Int(now % Int64(settings.windowSeconds))] += 1
        windows[key] = w
    }

    /// Whether one more retry to `key` fits; if so it is counted. A RetryBudget resource
    /// overrides the agent's ratio and floor.
    public func tryRetry(_ key: String, now: Int64, override: RetryBudgetPolicy? = nil) -> Bool {
        guard settings.enabled else { return true }
        var w = advance(key, now: now)
        let ratio = override?.ratio ?? settings.ratio, floor = override?.minRetriesPerSecond ?? settings.minPerSecond
        let allowed = ratio * Double(w.requests.reduce(0, +)) + floor * Double(settings.windowSeconds)
        guard Double(w.retries.reduce(0, +)) + 1 <= allowed else {
            windows[key] = w
            return false
        }
        w.retries[Int(now % Int64(settings.windowSeconds))] += 1
        windows[key] = w
        return true
    }
}

/// What the proxy handler keeps about one request with retries.
struct RetryAttempts {
    let policy: RetryPolicy
    let method: HTTPMethod
    /// The head as sent upstream (after policy, rewrite and header operations).
    let request: HTTPRequestHead
    let facts: RequestFacts
    let routed: RoutedDestination?
    let budgetKey: String
    /// The service's RetryBudget resource, if any (ratio, floor, non-idempotent opt-in).
    let budget: RetryBudgetPolicy?
    var retriesDone = 0
    /// Body parts (and the end) read so far, for replay; dropped past maxReplayBytes.
    var kept: [HTTPServerRequestPart] = []
    var keptBytes = 0
    var replayable = true
}
