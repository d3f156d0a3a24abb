/// A token bucket on a nanosecond clock (monotonic on one host; wall-clock nanoseconds when
/// several control planes share one through etcd). Pure value type.
public struct TokenBucket: Sendable, Equatable, Codable {
    public private(set) var capacity: Double
    public private(set) var perSecond: Double
    public private(set) var tokens: Double
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

    /// Takes as many whole tokens as there are, up to `count`; returns how many.
    public mutating func take(upTo count: Int, now: UInt64) -> Int {
        refill(now)
        let granted = max(0, min(count, Int(tokens.rounded(.down))))
        tokens -= Double(granted)
        return granted
    }

    /// Tokens handed out but not used come back (never above the capacity).
    public mutating func giveBack(_ count: Int, now: UInt64) {
        guard count > 0 else { return }
        refill(now)
        tokens = min(capacity, tokens + Double(count))
    }

    /// Seconds until one whole token is there.
    public func secondsUntilToken(now: UInt64) -> Double {
        var copy = self
        copy.refill(now)
        return copy.tokens >= 1 ? 0 : (1 - copy.tokens) / perSecond
    }

    /// A changed limit keeps what the bucket holds (at most the new capacity).
    public mutating func reconfigure(capacity newCapacity: Int, perSecond newRate: Double, now: UInt64) {
        guard Double(newCapacity) != capacity || newRate != perSecond else { return }
        refill(now)
        capacity = Double(newCapacity)
        perSecond = newRate
        tokens = min(tokens, capacity)
    }

    /// Full again: carries no state, may be forgotten.
    public func isFull(now: UInt64) -> Bool {
        now > last ? tokens + Double(now - last) / 1e9 * perSecond >= capacity : tokens >= capacity
    }
}

/// Global rate limits (RateLimitPolicy `mode: global`): an agent leases a few tokens of a
/// bucket the control plane keeps for the whole mesh, and returns those it did not use.
public struct TokenLeaseRequest: Codable, Sendable, Equatable {
    /// `namespace/policy/limit/keyValue`.
    public var key: String
    /// How many tokens the agent would like (its lease size, at least the requests waiting).
    public var want: Int
    /// Tokens of an expired lease the agent did not use.
    public var giveBack: Int
    /// The limit as the agent's config has it (the bucket follows the newest).
    public var burst: Int
    public var perSecond: Double

    public init(key: String, want: Int, giveBack: Int, burst: Int, perSecond: Double) {
        self.key = key
        self.want = want
        self.giveBack = giveBack
        self.burst = burst
        self.perSecond = perSecond
    }
}

public struct TokenLeaseGrant: Codable, Sendable, Equatable {
    public var key: String
    public var granted: Int
    /// When nothing (or less than wanted) was granted: seconds until the next token.
    public var retryAfter: Double

    public init(key: String, granted: Int, retryAfter: Double) {
        self.key = key
        self.granted = granted
        self.retryAfter = retryAfter
    }
}
