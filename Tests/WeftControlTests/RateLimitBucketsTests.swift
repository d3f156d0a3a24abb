import Foundation
import NIOPosix
import WeftCore
import XCTest
@testable import WeftControl

/// The global rate-limit coordinator: leases never hand out more than the bucket holds,
/// whoever asks, and unused tokens come back.
final class RateLimitBucketsTests: XCTestCase {
    let s: UInt64 = 1_000_000_000

    func request(want: Int, giveBack: Int = 0) -> TokenLeaseRequest {
        TokenLeaseRequest(key: "shop/g/l/*", want: want, giveBack: giveBack, burst: 20, perSecond: 100)
    }

    func testLeasesNeverExceedTheBucketAcrossAgents() {
        var bucket: TokenBucket?
        // Two agents asking in turn for 10 at a time, every millisecond, for one second.
        var granted = 0
        for ms in 0..<1000 {
            for _ in 0..<2 { granted += RateLimitBuckets.lease(request(want: 10), from: &bucket, now: UInt64(ms) * s / 1000).granted }
        }
        XCTAssertEqual(granted, 20 + 100 - 1, accuracy: 2, "the burst, then the rate: however many agents ask")
        let refused = RateLimitBuckets.lease(request(want: 10), from: &bucket, now: s - s / 1000)
        XCTAssertEqual(refused.granted, 0)
        XCTAssertGreaterThan(refused.retryAfter, 0)
        XCTAssertLessThanOrEqual(refused.retryAfter, 0.01)
        let returned = RateLimitBuckets.lease(request(want: 3, giveBack: 5), from: &bucket, now: s - s / 1000)
        XCTAssertEqual(returned.granted, 3, "tokens given back are leased again")
    }

    func testALimitChangeKeepsWhatTheBucketHolds() {
        var bucket: TokenBucket?
        XCTAssertEqual(RateLimitBuckets.lease(request(want: 15), from: &bucket, now: 0).granted, 15)
        let smaller = TokenLeaseRequest(key: "k", want: 10, giveBack: 0, burst: 2, perSecond: 1)
        XCTAssertEqual(RateLimitBuckets.lease(smaller, from: &bucket, now: 0).granted, 2, "at most the new burst")
    }

    func testBadLeaseRequestsAreRefusedByName() async {
        let buckets = RateLimitBuckets(etcd: nil)
        for (bad, word) in [(TokenLeaseRequest(key: "", want: 1, giveBack: 0, burst: 1, perSecond: 1), "key"),
                            (TokenLeaseRequest(key: "k", want: 1, giveBack: 0, burst: 0, perSecond: 1), "burst"),
                            (TokenLeaseRequest(key: "k", want: 1, giveBack: 0, burst: 1, perSecond: .nan), "perSecond"),
                            (TokenLeaseRequest(key: "k", want: -1, giveBack: 0, burst: 1, perSecond: 1), "want"),
                            (TokenLeaseRequest(key: "k", want: 1, giveBack: 5, burst: 1, perSecond: 1), "giveBack")] {
            do {
                _ = try await buckets.acquire([bad])
                XCTFail("\(bad) accepted")
            } catch {
                XCTAssertTrue("\(error)".contains(word), "\(error)")
            }
        }
        let many = Array(repeating: request(want: 1), count: ControlAPI.maxLeasesPerCall + 1)
        do { _ = try await buckets.acquire(many); XCTFail("too many") } catch { XCTAssertTrue("\(error)".contains("at most")) }
    }

    /// Two control planes on one etcd lease from one bucket: concurrent leases through both
    /// add up to the burst, never more; full buckets are swept.
    func testBucketsSharedThroughEtcd() async throws {
        let (port, stop) = try EtcdClientTests.startEtcd()
        defer { stop() }
        let etcd = EtcdClient(endpoints: [.init(host: "127.0.0.1", port: port)], group: MultiThreadedEventLoopGroup.singleton)
        try await EtcdClientTests.waitReady(etcd)
        let a = RateLimitBuckets(etcd: etcd), b = RateLimitBuckets(etcd: etcd)
        // A slow refill (1/min) so the test's own duration adds nothing.
        let r = TokenLeaseRequest(key: "shop/g/l/*", want: 3, giveBack: 0, burst: 30, perSecond: 1.0 / 60)
        let total = try await withThrowingTaskGroup(of: Int.self) { group in
            for i in 0..<16 {
                group.addTask { try await (i % 2 == 0 ? a : b).acquire([r]).reduce(0) { $0 + $1.granted } }
            }
            return try await group.reduce(0, +)
        }
        XCTAssertLessThanOrEqual(total, 30, "never more than the burst across both control planes")
        XCTAssertGreaterThanOrEqual(total, 24, "contention costs little")
        let refused = try await b.acquire([r])
        XCTAssertLessThanOrEqual(refused[0].granted, 30 - total)
        // Given back, then swept once full again.
        _ = try await a.acquire([TokenLeaseRequest(key: "shop/g/l/*", want: 0, giveBack: 30, burst: 30, perSecond: 1.0 / 60)])
        let swept = try await a.sweep()
        XCTAssertEqual(swept, 1)
        let left = try await etcd.getPrefix(RateLimitBuckets.prefix)
        XCTAssertEqual(left.count, 0)
    }
}
