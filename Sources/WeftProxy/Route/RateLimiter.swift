import WeftConfig
import WeftCore

/// What the rate limits of a host say about one request.
public enum RateVerdict: Equatable, Sendable {
    case allow
    /// The policy/limit that refused it, its requests per unit, and the wait in seconds.
    case limited(policy: String, limit: String, requestsPerUnit: Int, unit: String, retryAfter: Double)
}

/// One limit of a `mode: global` RateLimitPolicy as it applies to one request: the mesh-wide
/// bucket it draws from and what a 429 says about it.
public struct GlobalLimit: Sendable, Equatable {
    /// `namespace/policy/limit/keyValue`: the coordinator's bucket.
    public var key: String
    public var burst: Int
    public var perSecond: Double
    public var policy: String
    public var limit: String
    public var requestsPerUnit: Int
    public var unit: String

    /// Tokens an agent leases at once: a tenth of a second's worth (at least one, at most
    /// the burst), so a node that stops sending strands little of the mesh's budget.
    public var leaseSize: Int { max(1, min(burst, Int(perSecond / 10))) }

    public func limited(retryAfter: Double) -> RateVerdict {
        .limited(policy: policy, limit: limit, requestsPerUnit: requestsPerUnit, unit: unit, retryAfter: retryAfter)
    }
}

/// Token buckets for RateLimitPolicy, keyed by policy, limit and the request's key (source
/// address, identity, a header's value, or the whole service). Every workload proxy of the
/// agent draws from the same buckets, so a limit holds for a service however many callers
/// the node runs. Value type under the directory's lock.
///
/// With a coordinator (`coordinated`), the limits of `mode: global` policies are not kept
/// here but returned by `globalLimits` — except those keyed by `sourceIP`: a pod address
/// lives on one node, so its bucket is already exact where it is.
public struct RateLimiter: Sendable {
    private var buckets: [String: TokenBucket] = [:]
    static let forgetAbove = 10_000

    public init() {}

    /// Each (limit, bucket key) of `policies` that applies to this request.
    static func applicable(_ policies: [RateLimitPolicy], facts: RequestFacts, client: IPAddress?)
        -> [(policy: RateLimitPolicy, limit: RateLimitPolicy.Limit, key: String)] {
        var out: [(RateLimitPolicy, RateLimitPolicy.Limit, String)] = []
        for policy in policies {
            for limit in policy.limits where (limit.match.isEmpty || limit.match.contains(where: { RouteTable.matches($0, facts) }))
                && (limit.route == nil || limit.route == facts.routeName) {
                let value: String
                switch limit.key {
                case .sourceIP: value = client.map { "\($0)" } ?? "-"
                case .sourceIdentity: value = facts.sourceIdentity ?? "-"
                case .header(let name): value = facts.header(name) ?? "-"
                case .service: value = "*"
                }
                out.append((policy, limit, "\(policy.metadata.namespace)/\(policy.metadata.name)/\(limit.name)/\(value)"))
            }
        }
        return out
    }

    static func isGlobal(_ policy: RateLimitPolicy, _ limit: RateLimitPolicy.Limit) -> Bool {
        guard policy.mode == .global else { return false }
        if case .sourceIP = limit.key { return false }
        return true
    }

    public mutating func check(_ policies: [RateLimitPolicy], facts: RequestFacts, client: IPAddress?, now: UInt64,
                               coordinated: Bool = false) -> RateVerdict {
        for (policy, limit, id) in Self.applicable(policies, facts: facts, client: client) {
            if coordinated, Self.isGlobal(policy, limit) { continue }
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
        return .allow
    }

    /// The coordinated (mesh-wide) limits this request draws from.
    public static func globalLimits(_ policies: [RateLimitPolicy], facts: RequestFacts, client: IPAddress?) -> [GlobalLimit] {
        applicable(policies, facts: facts, client: client).compactMap { policy, limit, key in
            guard isGlobal(policy, limit) else { return nil }
            return GlobalLimit(key: key, burst: limit.burst, perSecond: limit.perSecond,
                               policy: "\(policy.metadata.namespace)/\(policy.metadata.name)", limit: limit.name,
                               requestsPerUnit: limit.requestsPerUnit, unit: limit.unit)
        }
    }
}
