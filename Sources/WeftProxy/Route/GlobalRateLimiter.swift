import Logging
import NIOCore
import Synchronization
import WeftCore

/// Where an agent leases tokens of the mesh-wide buckets (the control plane, over the
/// agent's existing connection to it).
public protocol RateLimitCoordinator: Sendable {
    func acquire(_ requests: [TokenLeaseRequest]) async throws -> [TokenLeaseGrant]
}

/// The agent's side of global rate limits (RateLimitPolicy `mode: global`): leases from the
/// coordinator (see LeaseBook), requests waiting for a lease, and the fallback when the
/// coordinator cannot be reached — then each agent keeps a local bucket with its share of
/// the limit (the limit divided by the number of nodes in the mesh), so a control plane
/// outage neither opens the floodgates nor refuses everything. Without a coordinator at all
/// (`weft agent` without `--control`: one node), global limits are plain local buckets.
public final class GlobalRateLimiter: Sendable {
    public enum Decision {
        case done(RateVerdict)
        case wait(EventLoopFuture<RateVerdict>)
    }

    private struct Waiter {
        let promise: EventLoopPromise<RateVerdict>
        let limit: GlobalLimit
    }

    private struct State {
        var book = LeaseBook()
        var waiters: [String: [Waiter]] = [:]
        var fallback: [String: TokenBucket] = [:]
        var downUntil: UInt64 = 0
        var coordinator: (any RateLimitCoordinator)?
        var nodes = 1
    }

    /// After a failed fetch, leases are not asked for again for this long.
    static let downFor: UInt64 = 1_000_000_000
    private let state = Mutex(State())
    private let coordinated = Atomic<Bool>(false)
    private let logger = Logger(label: "weft.ratelimit")

    public init() {}

    /// Whether global limits go to a coordinator (else the local limiter keeps them).
    public var isCoordinated: Bool { coordinated.load(ordering: .relaxed) }

    public func connect(_ coordinator: any RateLimitCoordinator) {
        state.withLock { $0.coordinator = coordinator }
        coordinated.store(true, ordering: .relaxed)
    }

    /// How many nodes the mesh has (each one's share when the coordinator is unreachable).
    public func setNodeCount(_ count: Int) {
        state.withLock { $0.nodes = max(1, count) }
    }

    /// Takes a token of every limit, at once when the leases allow, else after a fetch.
    public func check(_ limits: [GlobalLimit], now: UInt64, on loop: EventLoop) -> Decision {
        var futures: [EventLoopFuture<RateVerdict>] = []
        for limit in limits {
            var fetch: TokenLeaseRequest?
            var coordinator: (any RateLimitCoordinator)?
            let decided: RateVerdict? = state.withLock { s in
                coordinator = s.coordinator
                if coordinator == nil || now < s.downUntil { return Self.local(limit, now: now, &s) }
                switch s.book.take(limit, now: now) {
                case .allowed(let f):
                    fetch = f
                    return .allow
                case .limited(let wait):
                    return limit.limited(retryAfter: wait)
                case .wait(let f):
                    fetch = f
                    let promise = loop.makePromise(of: RateVerdict.self)
                    s.waiters[limit.key, default: []].append(Waiter(promise: promise, limit: limit))
                    futures.append(promise.futureResult)
                    return nil
                }
            }
            if let fetch, let coordinator { start(fetch, coordinator) }
            if let decided, decided != .allow { return .done(decided) }
        }
        guard let first = futures.first else { return .done(.allow) }
        let combined = futures.dropFirst().reduce(first) { sofar, next in
            sofar.flatMap { verdict in verdict == .allow ? next : loop.makeSucceededFuture(verdict) }
        }
        return .wait(combined)
    }

    private static func local(_ limit: GlobalLimit, now: UInt64, _ s: inout State) -> RateVerdict {
        let share = Double(s.nodes)
        var bucket = s.fallback[limit.key]
            ?? TokenBucket(capacity: max(1, Int((Double(limit.burst) / share).rounded(.up))), perSecond: limit.perSecond / share, now: now)
        let result = bucket.take(now: now)
        if s.fallback[limit.key] == nil, s.fallback.count >= RateLimiter.forgetAbove {
            s.fallback = s.fallback.filter { !$0.value.isFull(now: now) }
        }
        s.fallback[limit.key] = bucket
        return result.allowed ? .allow : limit.limited(retryAfter: result.retryAfter)
    }

    private func start(_ request: TokenLeaseRequest, _ coordinator: any RateLimitCoordinator) {
        Task {
            do {
                let grants = try await coordinator.acquire([request])
                guard let grant = grants.first(where: { $0.key == request.key }) else {
                    throw WeftError(.system, "the coordinator did not answer for \(request.key)")
                }
                self.deliver(grant)
            } catch {
                self.failed(request, error)
            }
        }
    }

    private func deliver(_ grant: TokenLeaseGrant) {
        let now = NIODeadline.now().uptimeNanoseconds
        let (waiters, served, wait) = state.withLock { s in
            let waiters = s.waiters.removeValue(forKey: grant.key) ?? []
            let (served, wait) = s.book.received(grant, waiting: waiters.count, now: now)
            return (waiters, served, wait)
        }
        for (i, waiter) in waiters.enumerated() {
            waiter.promise.succeed(i < served ? .allow : waiter.limit.limited(retryAfter: wait))
        }
    }

    private func failed(_ request: TokenLeaseRequest, _ error: Error) {
        let now = NIODeadline.now().uptimeNanoseconds
        let (verdicts, wasUp) = state.withLock { s -> ([(Waiter, RateVerdict)], Bool) in
            s.book.failed(key: request.key, giveBack: request.giveBack)
            let wasUp = now >= s.downUntil
            s.downUntil = now + Self.downFor
            let waiters = s.waiters.removeValue(forKey: request.key) ?? []
            return (waiters.map { ($0, Self.local($0.limit, now: now, &s)) }, wasUp)
        }
        if wasUp {
            logger.warning("global rate limits: the coordinator cannot be reached; each node keeps its share of every global limit meanwhile",
                           metadata: ["reason": "\(error)"])
        }
        for (waiter, verdict) in verdicts { waiter.promise.succeed(verdict) }
    }
}
