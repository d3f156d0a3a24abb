import Foundation
import Synchronization
import WeftCore

/// The global rate-limit coordinator: one token bucket per global limit and key for the
/// whole mesh, from which agents lease a few tokens at a time (see the agent's LeaseBook).
/// The total handed out never exceeds what the bucket holds, so a limit stays exact across
/// every agent; tokens an agent did not use come back.
///
/// With one control plane the buckets live in its memory (a restart refills them: at most one
/// extra burst). With several on one etcd store (`--store etcd://…`) every bucket is an etcd
/// key updated by compare-and-swap on its revision, so the control planes share one budget
/// and agents may lease from any of them; bucket times are then wall-clock.
public final class RateLimitBuckets: Sendable {
    private let etcd: EtcdClient?
    private let memory = Mutex<[String: TokenBucket]>([:])
    static let prefix = "weft/ratelimit/"
    static let forgetAbove = 100_000

    public init(etcd: EtcdClient?) {
        self.etcd = etcd
    }

    /// Checks what an agent may ask for; the message names the field.
    public static func validate(_ requests: [TokenLeaseRequest]) throws {
        guard requests.count <= ControlAPI.maxLeasesPerCall else {
            throw WeftError(.invalidArgument, "at most \(ControlAPI.maxLeasesPerCall) leases per Acquire (got \(requests.count))")
        }
        for r in requests {
            guard !r.key.isEmpty, r.key.utf8.count <= 1024 else { throw WeftError(.invalidArgument, "lease key must be 1 to 1024 bytes") }
            guard (1...1_000_000_000).contains(r.burst) else { throw WeftError(.invalidArgument, "lease \(r.key): burst \(r.burst) out of range") }
            guard r.perSecond.isFinite, r.perSecond > 0, r.perSecond <= 1e9 else {
                throw WeftError(.invalidArgument, "lease \(r.key): perSecond \(r.perSecond) out of range")
            }
            guard r.want >= 0, r.giveBack >= 0, r.giveBack <= r.burst else {
                throw WeftError(.invalidArgument, "lease \(r.key): want and giveBack must be 0 or more, giveBack at most the burst")
            }
        }
    }

    /// One lease from one bucket (created full; following the limit the agent sends).
    static func lease(_ r: TokenLeaseRequest, from bucket: inout TokenBucket?, now: UInt64) -> TokenLeaseGrant {
        var b = bucket ?? TokenBucket(capacity: r.burst, perSecond: r.perSecond, now: now)
        b.reconfigure(capacity: r.burst, perSecond: r.perSecond, now: now)
        b.giveBack(r.giveBack, now: now)
        let want = min(r.want, r.burst)
        let granted = b.take(upTo: want, now: now)
        bucket = b
        return TokenLeaseGrant(key: r.key, granted: granted, retryAfter: granted < want ? b.secondsUntilToken(now: now) : 0)
    }

    public func acquire(_ requests: [TokenLeaseRequest]) async throws -> [TokenLeaseGrant] {
        try Self.validate(requests)
        guard let etcd else {
            let now = DispatchTime.now().uptimeNanoseconds
            return memory.withLock { buckets in
                if buckets.count > Self.forgetAbove { buckets = buckets.filter { !$0.value.isFull(now: now) } }
                return requests.map { r in
                    var bucket = buckets[r.key]
                    let grant = Self.lease(r, from: &bucket, now: now)
                    buckets[r.key] = bucket
                    return grant
                }
            }
        }
        var grants: [TokenLeaseGrant] = []
        for r in requests { grants.append(try await Self.lease(r, etcd: etcd)) }
        return grants
    }

    static func wallNanoseconds() -> UInt64 { UInt64(Date().timeIntervalSince1970 * 1e9) }

    /// Read, lease, write back if nobody wrote meanwhile; a few tries, then nothing this time.
    static func lease(_ r: TokenLeaseRequest, etcd: EtcdClient) async throws -> TokenLeaseGrant {
        let key = prefix + r.key
        for _ in 0..<8 {
            let stored = try await etcd.get(key)
            var bucket = stored.flatMap { try? JSONDecoder().decode(TokenBucket.self, from: Data($0.value)) }
            let grant = lease(r, from: &bucket, now: wallNanoseconds())
            if try await etcd.compareAndPut(key, Array(try JSONEncoder().encode(bucket)), expectedModRevision: stored?.modRevision ?? 0) {
                return grant
            }
        }
        return TokenLeaseGrant(key: r.key, granted: 0, retryAfter: 0.01)
    }

    /// etcd: buckets full again carry nothing and are deleted (memory ones are forgotten
    /// above `forgetAbove`). Returns how many were deleted.
    @discardableResult
    public func sweep() async throws -> Int {
        guard let etcd else { return 0 }
        let now = Self.wallNanoseconds()
        var deleted = 0
        for kv in try await etcd.getPrefix(Self.prefix) {
            guard let bucket = try? JSONDecoder().decode(TokenBucket.self, from: Data(kv.value)), bucket.isFull(now: now) else { continue }
            if try await etcd.compareAndDelete(kv.key, expectedModRevision: kv.modRevision) { deleted += 1 }
        }
        return deleted
    }
}
