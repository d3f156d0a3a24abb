import WeftConfig
import WeftCore

/// Endpoint choice for one request. Pure: the caller supplies the turn counter, a source of
/// random indices and the in-flight count of each endpoint, so every policy is a unit test.
public enum Balancer {
    public static func pick(
        _ policy: LoadBalancer?, endpoints: [ServiceEndpoint], turn: Int, hashKey: String?,
        random: (Int) -> Int, inflight: (ServiceEndpoint) -> Int
    ) -> Int {
        precondition(!endpoints.isEmpty)
        switch policy {
        case .simple(.ROUND_ROBIN)?:
            return turn % endpoints.count
        case .simple(.RANDOM)?:
            return random(endpoints.count)
        case .consistentHash?:
            // No key (header or cookie absent): any endpoint, as Istio does.
            guard let hashKey else { return random(endpoints.count) }
            return HashRing(endpoints.map(\.workload)).owner(of: hashKey)
        case .simple(.LEAST_REQUEST)?, .simple(.PASSTHROUGH)?, nil:
            // Power of two choices: two distinct random endpoints, the less busy one wins.
            guard endpoints.count > 1 else { return 0 }
            let a = random(endpoints.count)
            var b = random(endpoints.count - 1)
            if b >= a { b += 1 }
            return inflight(endpoints[b]) < inflight(endpoints[a]) ? b : a
        }
    }

    /// The key a consistent-hash policy hashes for a request.
    public static func hashKey(_ policy: LoadBalancer?, facts: RequestFacts) -> String? {
        guard case .consistentHash(let key)? = policy else { return nil }
        switch key {
        case .header(let name):
            return facts.header(name)
        case .cookie(let name, _):
            guard let cookies = facts.header("cookie") else { return nil }
            for pair in cookies.split(separator: ";") {
                let kv = pair.split(separator: "=", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
                if kv.count == 2, kv[0] == name { return kv[1] }
            }
            return nil
        case .sourceIP:
            return facts.sourceIP.map { "\($0)" }
        }
    }
}

/// A consistent-hash ring: each endpoint owns `points` positions; a key belongs to the first
/// position at or after its hash. When an endpoint leaves only its keys move; when one joins
/// it takes keys only from the others' arcs. Hashes are FNV-1a 64 with a final mix, stable
/// across processes (Swift's Hasher is seeded per process).
public struct HashRing {
    private var ring: [(position: UInt64, owner: Int)] = []

    public init(_ members: [String], points: Int = 160) {
        for (index, member) in members.enumerated() {
            for i in 0..<points { ring.append((Self.hash("\(member)#\(i)"), index)) }
        }
        ring.sort { $0.position < $1.position }
    }

    public func owner(of key: String) -> Int {
        let h = Self.hash(key)
        var lo = 0, hi = ring.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if ring[mid].position < h { lo = mid + 1 } else { hi = mid }
        }
        return ring[lo == ring.count ? 0 : lo].owner
    }

    static func hash(_ s: String) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in s.utf8 { h = (h ^ UInt64(b)) &* 0x0000_0100_0000_01b3 }
        // splitmix64 finaliser: FNV alone clusters similar keys.
        h = (h ^ (h >> 30)) &* 0xbf58_476d_1ce4_e5b9
        h = (h ^ (h >> 27)) &* 0x94d0_49bb_1331_11eb
        return h ^ (h >> 31)
    }
}
