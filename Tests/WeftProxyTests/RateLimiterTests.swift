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
