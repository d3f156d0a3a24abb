import XCTest
@testable import WeftConfig
@testable import WeftProxy

final class ConnectionLimiterTests: XCTestCase {
    func testLimitQueueAndOverflow() {
        let l = ConnectionLimiter()
        var granted: [Int] = []
        XCTAssertEqual(l.admit("web", limit: 1, maxPending: 2) { granted.append(0); return true }, .granted)
        XCTAssertEqual(l.admit("web", limit: 1, maxPending: 2) { granted.append(1); return true }, .queued)
        XCTAssertEqual(l.admit("web", limit: 1, maxPending: 2) { granted.append(2); return false }, .queued, "this one will be gone")
        XCTAssertEqual(l.admit("web", limit: 1, maxPending: 2) { granted.append(3); return true }, .overflow)
        XCTAssertEqual(l.admit("api", limit: 1, maxPending: 0) { true }, .granted, "limits are per host")
        XCTAssertEqual(l.admit("x", limit: nil, maxPending: 0) { true }, .granted, "no limit configured")
        l.release("web")
        XCTAssertEqual(granted, [1], "the slot passed to the first waiter")
        XCTAssertEqual(l.inFlight("web"), 1)
        l.release("web")
        XCTAssertEqual(granted, [1, 2], "a waiter that is gone passes the slot on")
        XCTAssertEqual(l.inFlight("web"), 0)
        XCTAssertEqual(l.queued("web"), 0)
    }

    func testConcurrencyAndRetries() {
        var pool = ConnectionPool()
        pool.maxConnections = 4
        pool.http2MaxRequests = 10
        XCTAssertEqual(ConnectionLimiter.concurrency(pool, http2: false), 4)
        XCTAssertEqual(ConnectionLimiter.concurrency(pool, http2: true), 10, "maxConnections counts HTTP/1.1 connections")
        XCTAssertNil(ConnectionLimiter.concurrency(ConnectionPool(), http2: false))
        let l = ConnectionLimiter()
        XCTAssertTrue(l.tryRetry("web", max: 1))
        XCTAssertFalse(l.tryRetry("web", max: 1))
        l.releaseRetry("web")
        XCTAssertTrue(l.tryRetry("web", max: 1))
        XCTAssertTrue(l.tryRetry("web", max: nil))
    }
}
