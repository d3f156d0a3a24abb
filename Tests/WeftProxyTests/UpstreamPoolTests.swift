import NIOCore
import NIOEmbedded
import WeftCore
import WeftIdentity
import XCTest
@testable import WeftProxy

/// The pool on virtual time: idle connections expire, connections in use never do.
final class UpstreamPoolTests: XCTestCase {
    let endpoint = UpstreamKey(endpoint: OriginalDestination(ip: IPAddress("10.0.0.2")!, port: 3000), tunnel: nil)

    func connected(_ loop: EmbeddedEventLoop) throws -> EmbeddedChannel {
        let channel = EmbeddedChannel(loop: loop)
        try channel.connect(to: SocketAddress(ipAddress: "10.0.0.2", port: 3000)).wait()
        return channel
    }

    func testIdleConnectionsExpireButTakenOnesAreNotClosedUnderTheirUser() throws {
        let loop = EmbeddedEventLoop()
        let pool = UpstreamPool()
        let busy = try connected(loop), idle = try connected(loop)
        pool.give(busy, for: endpoint)
        XCTAssertTrue(pool.take(endpoint) === busy)
        pool.give(idle, for: endpoint)
        loop.advanceTime(by: .seconds(61))
        XCTAssertTrue(busy.isActive, "a connection taken back into use must not be closed by its old idle timer")
        XCTAssertFalse(idle.isActive, "an idle connection is closed after the idle timeout")
        XCTAssertNil(pool.take(endpoint))
    }

    func testAConnectionIsReusedOnlyForItsOwnTransport() throws {
        let loop = EmbeddedEventLoop()
        let pool = UpstreamPool()
        let plain = try connected(loop)
        pool.give(plain, for: endpoint)
        let tunnelled = UpstreamKey(endpoint: endpoint.endpoint,
                                    tunnel: try .init(parsing: "spiffe://weft.local/ns/default/sa/web"))
        XCTAssertNil(pool.take(tunnelled), "a plaintext connection is not a tunnel stream")
        XCTAssertTrue(pool.take(endpoint) === plain)
    }

    func testClosedConnectionsLeaveThePool() throws {
        let loop = EmbeddedEventLoop()
        let pool = UpstreamPool()
        let c = try connected(loop)
        pool.give(c, for: endpoint)
        try c.close().wait()
        XCTAssertNil(pool.take(endpoint))
    }
}

extension UpstreamPoolTests {
    /// A connection reused many times stays cheap to return and still leaves the pool when
    /// it closes.
    func testReusedConnectionReturnsManyTimesAndStillLeavesOnClose() throws {
        let loop = EmbeddedEventLoop()
        let pool = UpstreamPool()
        let c = try connected(loop)
        for _ in 0..<10_000 {
            pool.give(c, for: endpoint)
            XCTAssertTrue(pool.take(endpoint) === c)
        }
        pool.give(c, for: endpoint)
        try c.close().wait()
        XCTAssertNil(pool.take(endpoint))
    }

    /// Several idle connections to one endpoint: the one returned last is taken first (the
    /// warmest), each is taken once, and a closed one is never handed out.
    func testIdleConnectionsAreTakenLastInFirstOutAndOnlyWhileOpen() throws {
        let loop = EmbeddedEventLoop()
        let pool = UpstreamPool()
        let a = try connected(loop), b = try connected(loop), c = try connected(loop)
        pool.give(a, for: endpoint)
        pool.give(b, for: endpoint)
        pool.give(c, for: endpoint)
        try b.close().wait()
        XCTAssertTrue(pool.take(endpoint) === c)
        XCTAssertTrue(pool.take(endpoint) === a, "the closed one in between is not handed out")
        XCTAssertNil(pool.take(endpoint))
        pool.give(a, for: endpoint)
        XCTAssertTrue(pool.take(endpoint) === a, "an emptied endpoint takes connections again")
    }
}
