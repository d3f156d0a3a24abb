import NIOCore
import NIOEmbedded
import NIOHTTP2
import XCTest
@testable import WeftProxy

/// HTTP2DrainHandler: GOAWAY naming the last stream taken, and the connection closes only
/// once its open streams have ended.
final class DrainHandlerTests: XCTestCase {

    func testAServerSendsGoAwayAndClosesAfterItsLastStream() throws {
        let handler = HTTP2DrainHandler(sendsGoAway: true)
        let channel = EmbeddedChannel(handler: handler)
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        handler.streamCreated(HTTP2StreamID(1), channel: channel)
        handler.streamCreated(HTTP2StreamID(3), channel: channel)
        handler.streamClosed(HTTP2StreamID(1), channel: channel)
        channel.pipeline.fireUserInboundEventTriggered(ProxyDrainEvent())
        guard let frame = try channel.readOutbound(as: HTTP2Frame.self), case .goAway(let last, let code, _) = frame.payload else {
            return XCTFail("no GOAWAY")
        }
        XCTAssertEqual(last, HTTP2StreamID(3))
        XCTAssertEqual(code, .noError)
        XCTAssertTrue(channel.isActive, "stream 3 is still open")
        channel.pipeline.fireUserInboundEventTriggered(ProxyDrainEvent())
        XCTAssertNil(try channel.readOutbound(as: HTTP2Frame.self), "one GOAWAY")
        handler.streamClosed(HTTP2StreamID(3), channel: channel)
        XCTAssertFalse(channel.isActive, "closed once the last stream ended")
    }

    func testAnIdleClientConnectionClosesAtOnceWithoutGoAway() throws {
        let handler = HTTP2DrainHandler(sendsGoAway: false)
        let channel = EmbeddedChannel(handler: handler)
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        handler.streamCreated(HTTP2StreamID(1), channel: channel)
        handler.streamClosed(HTTP2StreamID(1), channel: channel)
        XCTAssertTrue(channel.isActive, "no drain yet: an idle connection stays")
        channel.pipeline.fireUserInboundEventTriggered(ProxyDrainEvent())
        XCTAssertNil(try channel.readOutbound(as: HTTP2Frame.self))
        XCTAssertFalse(channel.isActive)
    }
}
