import WeftConfig
import WeftCore

/// A token bucket on a monotonic clock (nanoseconds). Pure value type.
public struct TokenBucket: Sendable, Equatable {
    public let capacity: Double
    public let perSecond: Double
    private(set) var tokens: Double
    private var last: UInt64

    public init(capacity: Int, perSecond: Double, now: UInt64) {
        self.capacity = Double(capacity)
        self.perSecond = perSecond
        tokens = Double(capacity)
        last = now
    }

    private mutating func refill(_ now: UInt64) {
        if now > last { tokens = min(capacity, tokens + Double(now - last) / 1e9 * perSecond) }
        last = max(last, now)
    }

    /// Takes one token if there is one. `retryAfter`: seconds until the next token.
    public mutating func take(now: UInt64) -> (allowed: Bool, remaining: Int, retryAfter: Double) {
        refill(now)
        if tokens >= 1 {
            tokens -= 1
            return (true, Int(tokens), 0)
        }
        return (false, 0, (1 - tokens) / perSecond)
    }

    /// Full again: carries no state, may be forgotten.
    public func isFull(now: UInt64) -> Bool {
        now > last ? tokens + Double(now - last) / 1e9 * perSecond >= capacity : tokens >= capacity
    }
}

/// What the rate limits of a host say about one request.
public enum RateVerdict: Equatable, Sendable {
    case allow
    /// The policy/limit that refused it, its requests per unit, and the wait in seconds.
    case limited(policy: String, limit: String, requestsPerUnit: Int, unit: String, retryAfter: Double)
}

/// Local (per agent) token buckets for RateLimitPolicy, keyed by policy, limit and the
/// request's key (source address, a header's value, or the whole service). Every workload
/// proxy of the agent draws from the same buckets, so a limit holds for a service however
/// many callers the node runs. Value type under the directory's lock.
public struct RateLimiter: Sendable {
    private var buckets: [String: TokenBucket] = [:]
    static let forgetAbove = 10_000

    public init() {}

    public mutating func check(_ policies: [RateLimitPolicy], facts: RequestFacts, client: IPAddress?, now: UInt64) -> RateVerdict {
        for policy in policies {
            for limit in policy.limits where limit.match.isEmpty || limit.match.contains(where: { RouteTable.matches($0, facts) }) {
                let value: String
                switch limit.key {
                case .sourceIP: value = client.map { "\($0)" } ?? "-"
                case .sourceIdentity: value = facts.sourceIdentity ?? "-"
                case .header(let name): value = facts.headers[name] ?? "-"
                case .service: value = "*"
                }
                let id = "\(policy.metadata.namespace)/\(policy.metadata.name)/\(limit.name)/\(value)"
                var bucket = buckets[id] ?? TokenBucket(capacity: limit.burst, perSecond: limit.perSecond, now: now)
                let result = bucket.take(now: now)
                if buckets[id] == nil, buckets.count >= Self.forgetAbove {
                    buckets = buckets.filter { !$0.value.isFull(now: now) }
                }
                buckets[id] = bucket
                if !result.allowed {
                    return .limited(policy: "\(policy.metadata.namespace)/\(policy.metadata.name)", limit: limit.name,
                                    requestsPerUnit: limit.requestsPerUnit, unit: limit.unit, retryAfter: result.retryAfter)
                }
            }
        }
        return .allow
    }
}
