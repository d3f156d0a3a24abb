import Foundation
import NIOCore
import NIOPosix
import WeftCore
import XCTest
@testable import WeftConfig
@testable import WeftProxy

final class RateLimiterTests: XCTestCase {
    let s: UInt64 = 1_000_000_000

    func testTokenBucketBurstRefillAndWait() {
        var b = TokenBucket(capacity: 2, perSecond: 4, now: 0)
        XCTAssertTrue(b.take(now: 0).allowed)
        XCTAssertTrue(b.take(now: 0).allowed)
        let denied = b.take(now: 0)
        XCTAssertFalse(denied.allowed)
        XCTAssertEqual(denied.retryAfter, 0.25, accuracy: 1e-9)
        XCTAssertTrue(b.take(now: s / 4).allowed, "a token every 250 ms")
        XCTAssertFalse(b.take(now: s / 4).allowed)
        XCTAssertTrue(b.isFull(now: 10 * s))
        XCTAssertEqual(b.take(now: 10 * s).remaining, 1, "refill stops at the burst size")
    }

    func policy(_ key: RateLimitPolicy.Limit.Key, match: [HTTPMatchRequest] = []) -> RateLimitPolicy {
        let loc = SourceLocation(file: "t", line: 1, column: 1)
        return RateLimitPolicy(metadata: ObjectMeta(name: "p", namespace: "default"), host: "web",
                               limits: [.init(name: "l", key: key, perSecond: 1, requestsPerUnit: 1, unit: "second", burst: 1, match: match, location: loc)],
                               location: loc)
    }

    func facts(_ path: String = "/", headers: [String: String] = [:]) -> RequestFacts {
        RequestFacts(method: "GET", path: path, headers: headers, port: 80)
    }

    func testBucketsPerClientHeaderOrService() {
        var r = RateLimiter()
        let a = IPAddress("10.0.0.1"), b = IPAddress("10.0.0.2")
        XCTAssertEqual(r.check([policy(.sourceIP)], facts: facts(), client: a, now: 0), .allow)
        XCTAssertNotEqual(r.check([policy(.sourceIP)], facts: facts(), client: a, now: 0), .allow)
        XCTAssertEqual(r.check([policy(.sourceIP)], facts: facts(), client: b, now: 0), .allow, "another client has its own bucket")
        var h = RateLimiter()
        XCTAssertEqual(h.check([policy(.header("x-user"))], facts: facts(headers: ["x-user": "ann"]), client: a, now: 0), .allow)
        XCTAssertEqual(h.check([policy(.header("x-user"))], facts: facts(headers: ["x-user": "bob"]), client: a, now: 0), .allow)
        XCTAssertNotEqual(h.check([policy(.header("x-user"))], facts: facts(headers: ["x-user": "ann"]), client: b, now: 0), .allow)
        var svc = RateLimiter()
        XCTAssertEqual(svc.check([policy(.service)], facts: facts(), client: a, now: 0), .allow)
        guard case .limited(let p, let l, let rate, let unit, let wait) = svc.check([policy(.service)], facts: facts(), client: b, now: 0) else {
            return XCTFail("one bucket for the whole service")
        }
        XCTAssertEqual([p, l, "\(rate)", unit], ["default/p", "l", "1", "second"])
        XCTAssertEqual(wait, 1, accuracy: 1e-9)
        // sourceIdentity: two replicas of one caller (two addresses) share a bucket.
        var id = RateLimiter()
        var caller = facts()
        caller.sourceIdentity = "spiffe://weft.local/ns/shop/sa/cart"
        var other = facts()
        other.sourceIdentity = "spiffe://weft.local/ns/shop/sa/ads"
        XCTAssertEqual(id.check([policy(.sourceIdentity)], facts: caller, client: a, now: 0), .allow)
        XCTAssertNotEqual(id.check([policy(.sourceIdentity)], facts: caller, client: b, now: 0), .allow, "same identity, other replica")
        XCTAssertEqual(id.check([policy(.sourceIdentity)], facts: other, client: a, now: 0), .allow, "another identity")
        var m = RateLimiter()
        let admin = policy(.service, match: [HTTPMatchRequest(uri: .prefix("/admin"), location: SourceLocation(file: "t", line: 1, column: 1))])
        for _ in 0..<5 { XCTAssertEqual(m.check([admin], facts: facts("/public"), client: a, now: 0), .allow, "only matching requests count") }
        XCTAssertEqual(m.check([admin], facts: facts("/admin/x"), client: a, now: 0), .allow)
        XCTAssertNotEqual(m.check([admin], facts: facts("/admin/y"), client: a, now: 0), .allow)
    }
}

final class RouteLimitTests: XCTestCase {
    func testALimitForOneRouteCountsOnlyItsRequests() {
        let loc = SourceLocation(file: "t", line: 1, column: 1)
        let p = RateLimitPolicy(metadata: ObjectMeta(name: "p", namespace: "default"), host: "web",
                                limits: [.init(name: "l", key: .service, perSecond: 1, requestsPerUnit: 1, unit: "second", burst: 1,
                                               match: [], route: "checkout", location: loc)], location: loc)
        var r = RateLimiter()
        var other = RequestFacts(method: "GET", path: "/", headers: [:], port: 80)
        other.routeName = "browse"
        var checkout = other
        checkout.routeName = "checkout"
        for _ in 0..<3 { XCTAssertEqual(r.check([p], facts: other, client: nil, now: 0), .allow, "another route is not limited") }
        XCTAssertEqual(r.check([p], facts: checkout, client: nil, now: 0), .allow)
        XCTAssertNotEqual(r.check([p], facts: checkout, client: nil, now: 0), .allow)
    }
}

/// Global limits: what stays local, and the agent's leases of the mesh-wide buckets.
final class GlobalRateLimitTests: XCTestCase {
    let s: UInt64 = 1_000_000_000
    let loc = SourceLocation(file: "t", line: 1, column: 1)

    func globalPolicy(_ key: RateLimitPolicy.Limit.Key) -> RateLimitPolicy {
        RateLimitPolicy(metadata: ObjectMeta(name: "g", namespace: "shop"), host: "web", mode: .global,
                        limits: [.init(name: "l", key: key, perSecond: 100, requestsPerUnit: 100, unit: "second", burst: 20, match: [], location: loc)],
                        location: loc)
    }

    func testCoordinatedGlobalLimitsLeaveTheLocalBucketsExceptPerSourceIP() {
        let facts = RequestFacts(method: "GET", path: "/", headers: ["x-user": "ann"], port: 80)
        let a = IPAddress("10.0.0.1")
        var r = RateLimiter()
        for _ in 0..<50 {
            XCTAssertEqual(r.check([globalPolicy(.service)], facts: facts, client: a, now: 0, coordinated: true), .allow, "the coordinator decides")
        }
        XCTAssertEqual(RateLimiter.globalLimits([globalPolicy(.header("x-user"))], facts: facts, client: a).map(\.key), ["shop/g/l/ann"])
        XCTAssertEqual(RateLimiter.globalLimits([globalPolicy(.sourceIP)], facts: facts, client: a), [], "a pod address lives on one node")
        var perIP = RateLimiter()
        let results = (0..<21).map { _ in perIP.check([globalPolicy(.sourceIP)], facts: facts, client: a, now: 0, coordinated: true) }
        XCTAssertEqual(results.filter { $0 == .allow }.count, 20, "sourceIP stays an exact local bucket")
        var alone = RateLimiter()
        let local = (0..<21).map { _ in alone.check([globalPolicy(.service)], facts: facts, client: a, now: 0) }
        XCTAssertEqual(local.filter { $0 == .allow }.count, 20, "no coordinator (one node): global limits are local buckets")
    }

    func limit(rate: Double = 100, burst: Int = 20) -> GlobalLimit {
        GlobalLimit(key: "shop/g/l/*", burst: burst, perSecond: rate, policy: "shop/g", limit: "l", requestsPerUnit: Int(rate), unit: "second")
    }

    func testLeaseSize() {
        XCTAssertEqual(limit(rate: 100, burst: 20).leaseSize, 10, "a tenth of a second")
        XCTAssertEqual(limit(rate: 1000, burst: 20).leaseSize, 20, "never above the burst")
        XCTAssertEqual(limit(rate: 0.5, burst: 20).leaseSize, 1)
    }

    func testTheFirstRequestWaitsThenLeasesServeAndRefillAhead() {
        var book = LeaseBook()
        let l = limit()
        guard case .wait(let fetch?) = book.take(l, now: 0) else { return XCTFail("nothing leased yet") }
        XCTAssertEqual(fetch, TokenLeaseRequest(key: l.key, want: 10, giveBack: 0, burst: 20, perSecond: 100))
        XCTAssertEqual(book.take(l, now: 0), .wait(fetch: nil), "one fetch at a time")
        let (served, _) = book.received(TokenLeaseGrant(key: l.key, granted: 10, retryAfter: 0), waiting: 2, now: 0)
        XCTAssertEqual(served, 2)
        XCTAssertEqual(book.entry(l.key)?.tokens, 8)
        for _ in 0..<3 { XCTAssertEqual(book.take(l, now: 1), .allowed(fetch: nil)) }
        guard case .allowed(let next?) = book.take(l, now: 1) else { return XCTFail("below half a lease: fetch ahead") }
        XCTAssertEqual(next.want, 10)
        XCTAssertEqual(book.take(l, now: 1), .allowed(fetch: nil), "already fetching")
    }

    func testARefusalIsRememberedUntilItsRetryAfter() {
        var book = LeaseBook()
        let l = limit()
        _ = book.take(l, now: 0)
        let (served, wait) = book.received(TokenLeaseGrant(key: l.key, granted: 0, retryAfter: 0.25), waiting: 1, now: 0)
        XCTAssertEqual(served, 0)
        XCTAssertEqual(wait, 0.25)
        guard case .limited(let left) = book.take(l, now: s / 10) else { return XCTFail("still refused") }
        XCTAssertEqual(left, 0.15, accuracy: 1e-9)
        guard case .wait(_?) = book.take(l, now: s / 4) else { return XCTFail("asks again after the retry-after") }
    }

    func testExpiredTokensAreGivenBack() {
        var book = LeaseBook()
        let l = limit()
        _ = book.take(l, now: 0)
        _ = book.received(TokenLeaseGrant(key: l.key, granted: 10, retryAfter: 0), waiting: 1, now: 0)
        guard case .wait(let fetch?) = book.take(l, now: 2 * s) else { return XCTFail("an expired lease is not used") }
        XCTAssertEqual(fetch.giveBack, 9, "the 9 unused tokens go back to the mesh's bucket")
        book.failed(key: l.key, giveBack: fetch.giveBack)
        guard case .wait(let again?) = book.take(l, now: 2 * s) else { return XCTFail() }
        XCTAssertEqual(again.giveBack, 9, "a failed fetch keeps them for the next")
    }

    /// The agent side against a scripted coordinator: waiters are served in order, and an
    /// unreachable coordinator leaves each node its share of the limit.
    func testWaitersAndTheFallbackShare() throws {
        final class Scripted: RateLimitCoordinator, @unchecked Sendable {
            let lock = NSLock()
            var grants: [Int] = []
            var fail = false
            func acquire(_ requests: [TokenLeaseRequest]) async throws -> [TokenLeaseGrant] {
                try lock.withLock {
                    if fail { throw WeftError(.agentUnavailable, "down") }
                    return requests.map { TokenLeaseGrant(key: $0.key, granted: grants.isEmpty ? 0 : grants.removeFirst(), retryAfter: 0.5) }
                }
            }
        }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { try? group.syncShutdownGracefully() }
        let loop = group.next()
        let coordinator = Scripted()
        coordinator.grants = [1]
        let limiter = GlobalRateLimiter()
        limiter.connect(coordinator)
        let l = limit(rate: 10, burst: 4)
        var futures: [EventLoopFuture<RateVerdict>] = []
        try loop.submit {
            for _ in 0..<2 {
                guard case .wait(let f) = limiter.check([l], now: NIODeadline.now().uptimeNanoseconds, on: loop) else { return XCTFail("waits") }
                futures.append(f)
            }
        }.wait()
        XCTAssertEqual(try futures[0].wait(), .allow, "the first waiter gets the one token")
        XCTAssertEqual(try futures[1].wait(), l.limited(retryAfter: 0.5), "the second is refused with the coordinator's wait")

        coordinator.lock.withLock { coordinator.fail = true }
        limiter.setNodeCount(2)
        let other = GlobalLimit(key: "shop/g/l/other", burst: 4, perSecond: 10, policy: "shop/g", limit: "l", requestsPerUnit: 10, unit: "second")
        let first = try loop.submit { limiter.check([other], now: NIODeadline.now().uptimeNanoseconds, on: loop) }.wait()
        guard case .wait(let f) = first else { return XCTFail("asks the coordinator first") }
        XCTAssertEqual(try f.wait(), .allow, "decided locally when the coordinator fails")
        var allowed = 1
        for _ in 0..<5 {
            if case .done(.allow) = try loop.submit({ limiter.check([other], now: NIODeadline.now().uptimeNanoseconds, on: loop) }).wait() { allowed += 1 }
        }
        XCTAssertEqual(allowed, 2, "half the burst of 4 on each of 2 nodes")
    }
}
