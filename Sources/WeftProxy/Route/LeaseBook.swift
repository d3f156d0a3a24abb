import WeftCore

/// An agent's leases on the mesh-wide buckets of global rate limits: the pure decision part
/// of GlobalRateLimiter (times are monotonic nanoseconds).
///
/// Per bucket key the agent holds a few tokens leased from the coordinator. A request takes
/// one; when fewer than half a lease is left, the next lease is fetched in the background, so
/// steady traffic rarely waits. With none left the request waits for the fetch. A refusal
/// from the coordinator (the mesh's bucket is empty) is remembered until its retry-after, so
/// a limited caller gets 429s locally instead of one round trip each. Leased tokens expire
/// after `leaseTTL` and are given back with the next fetch: no node hoards the budget.
struct LeaseBook: Sendable {
    struct Entry: Sendable, Equatable {
        var tokens = 0
        var expiresAt: UInt64 = 0
        var deniedUntil: UInt64 = 0
        var fetching = false
        var giveBack = 0
        var lastUsed: UInt64 = 0
    }

    enum Take: Equatable {
        /// Go ahead; `fetch`: also ask for the next lease (in the background).
        case allowed(fetch: TokenLeaseRequest?)
        case limited(retryAfter: Double)
        /// Wait for a lease; `fetch`: this request is the one that asks for it.
        case wait(fetch: TokenLeaseRequest?)
    }

    static let leaseTTL: UInt64 = 1_000_000_000
    /// The shortest time a refusal is remembered (bounds the round trips of a limited caller).
    static let minimumDenial = 0.005
    static let forgetAbove = 10_000
    private(set) var entries: [String: Entry] = [:]

    mutating func take(_ limit: GlobalLimit, now: UInt64) -> Take {
        var e = entries[limit.key] ?? Entry()
        defer { entries[limit.key] = e }
        e.lastUsed = now
        if e.tokens > 0, now >= e.expiresAt {
            e.giveBack += e.tokens
            e.tokens = 0
        }
        if e.tokens > 0 {
            e.tokens -= 1
            if !e.fetching, now >= e.deniedUntil, limit.leaseSize > 1, e.tokens * 2 < limit.leaseSize {
                return .allowed(fetch: request(limit, &e))
            }
            return .allowed(fetch: nil)
        }
        if now < e.deniedUntil { return .limited(retryAfter: Double(e.deniedUntil - now) / 1e9) }
        if e.fetching { return .wait(fetch: nil) }
        return .wait(fetch: request(limit, &e))
    }

    private func request(_ limit: GlobalLimit, _ e: inout Entry) -> TokenLeaseRequest {
        e.fetching = true
        defer { e.giveBack = 0 }
        return TokenLeaseRequest(key: limit.key, want: limit.leaseSize, giveBack: e.giveBack, burst: limit.burst, perSecond: limit.perSecond)
    }

    /// A lease arrived: `waiting` requests are served from it first. Returns how many were
    /// served and, for the others, the wait to tell them.
    mutating func received(_ grant: TokenLeaseGrant, waiting: Int, now: UInt64) -> (served: Int, retryAfter: Double) {
        var e = entries[grant.key] ?? Entry()
        defer { entries[grant.key] = e }
        e.fetching = false
        if grant.granted > 0 {
            e.tokens += grant.granted
            e.expiresAt = now + Self.leaseTTL
        }
        let served = min(waiting, e.tokens)
        e.tokens -= served
        var wait = 0.0
        if grant.granted == 0 || served < waiting {
            wait = max(grant.retryAfter, Self.minimumDenial)
            e.deniedUntil = now + UInt64(wait * 1e9)
        }
        if entries.count > Self.forgetAbove {
            entries = entries.filter { $0.value.fetching || $0.value.tokens > 0 || now - $0.value.lastUsed < Self.leaseTTL }
        }
        return (served, wait)
    }

    /// The fetch failed (no coordinator): the caller decides locally this time.
    mutating func failed(key: String, giveBack: Int) {
        entries[key]?.fetching = false
        entries[key]?.giveBack += giveBack
    }

    func entry(_ key: String) -> Entry? { entries[key] }
}
