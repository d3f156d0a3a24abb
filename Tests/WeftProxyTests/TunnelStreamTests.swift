import NIOCore
import NIOEmbedded
import NIOHPACK
import NIOHTTP2
import WeftCore
import XCTest
@testable import WeftProxy

/// The client's end of a tunnel stream on an embedded channel: CONNECT is sent, a 200 turns
/// the stream into a byte channel, a refusal or silence fails it.
final class TunnelStreamTests: XCTestCase {
    let target = OriginalDestination(ip: IPAddress("10.0.0.7")!, port: 8080)

    func start(_ loop: EmbeddedEventLoop, timeout: TimeAmount = .seconds(2)) throws -> (EmbeddedChannel, EventLoopFuture<Channel>) {
        let channel = EmbeddedChannel(loop: loop)
        let opened = loop.makePromise(of: Channel.self)
        try channel.pipeline.syncOperations.addHandler(
            TunnelConnectClient(target: target, proto: "http/1.1", opened: opened, timeout: timeout, initializer: { _ in }))
        try channel.connect(to: SocketAddress(ipAddress: "10.0.0.7", port: 15008)).wait()
        guard case .headers(let connect)? = try channel.readOutbound(as: HTTP2Frame.FramePayload.self) else {
            XCTFail("no CONNECT headers written")
            return (channel, opened.futureResult)
        }
        XCTAssertEqual(connect.headers.first(name: ":method"), "CONNECT")
        XCTAssertEqual(connect.headers.first(name: ":authority"), "10.0.0.7:8080")
        XCTAssertEqual(connect.headers.first(name: "x-weft-protocol"), "http/1.1")
        XCTAssertFalse(connect.endStream)
        return (channel, opened.futureResult)
    }

    func testAcceptedStreamCarriesBytesBothWays() throws {
        let loop = EmbeddedEventLoop()
        let (channel, opened) = try start(loop)
        try channel.writeInbound(HTTP2Frame.FramePayload.headers(.init(headers: [":status": "200"])))
        XCTAssertTrue(try opened.wait() === channel)
        var data = channel.allocator.buffer(string: "hello")
        try channel.writeInbound(HTTP2Frame.FramePayload.data(.init(data: .byteBuffer(data))))
        XCTAssertEqual(try channel.readInbound(as: ByteBuffer.self), data)
        data = channel.allocator.buffer(string: "back")
        try channel.writeOutbound(data)
        guard case .data(let frame)? = try channel.readOutbound(as: HTTP2Frame.FramePayload.self), case .byteBuffer(let sent) = frame.data else {
            return XCTFail("bytes not framed as DATA")
        }
        XCTAssertEqual(sent, data)
        loop.advanceTime(by: .seconds(5))
        XCTAssertTrue(channel.isActive, "no timeout once accepted")
    }

    func testRefusalCarriesTheStatusAndReason() throws {
        let loop = EmbeddedEventLoop()
        let (channel, opened) = try start(loop)
        try channel.writeInbound(HTTP2Frame.FramePayload.headers(.init(
            headers: [":status": "403", "x-weft-reason": "denied by AuthorizationPolicy shop/x"], endStream: true)))
        XCTAssertThrowsError(try opened.wait()) { error in
            XCTAssertEqual((error as? TunnelRefused)?.status, 403)
            XCTAssertTrue("\(error)".contains("shop/x"), "\(error)")
        }
        XCTAssertFalse(channel.isActive)
    }

    func testAPeerThatNeverAnswersTimesOut() throws {
        let loop = EmbeddedEventLoop()
        let (channel, opened) = try start(loop, timeout: .seconds(2))
        loop.advanceTime(by: .seconds(1))
        XCTAssertTrue(channel.isActive)
        loop.advanceTime(by: .seconds(2))
        XCTAssertThrowsError(try opened.wait()) { error in
            XCTAssertTrue("\(error)".contains("did not accept the stream"), "\(error)")
        }
        XCTAssertFalse(channel.isActive)
    }
}
