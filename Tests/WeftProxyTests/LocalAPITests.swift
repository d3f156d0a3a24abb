import Logging
import NIOCore
import NIOEmbedded
import WeftCore
import XCTest
@testable import WeftAgent
import WeftControl

final class LocalAPITests: XCTestCase {
    func testLineDecoderSplitsAndBoundsFrames() throws {
        let channel = EmbeddedChannel(handler: ByteToMessageHandler(LineFrameDecoder(maxLength: 16)))
        try channel.writeInbound(channel.allocator.buffer(string: "{\"a\":1}\n{\"b\""))
        XCTAssertEqual(try channel.readInbound(as: ByteBuffer.self).map { String(buffer: $0) }, "{\"a\":1}")
        XCTAssertNil(try channel.readInbound(as: ByteBuffer.self))
        XCTAssertThrowsError(try channel.writeInbound(channel.allocator.buffer(string: String(repeating: "x", count: 40))))
    }

    func testMalformedAndUnknownRequestsGetClearErrors() async throws {
        var config = AgentConfiguration()
        config.podCIDR = CIDR("10.250.0.0/29")!
        let registry = try WorkloadRegistry(config: config, logger: Logger(label: "test"))
        let api = LocalAPI(registry: registry, capture: CaptureSettings(), logger: Logger(label: "test"))
        let garbage = await api.respond(to: Array("not json".utf8))
        XCTAssertEqual(garbage.errorCode, "protocol-error")
        XCTAssertTrue(garbage.error!.contains("malformed request"))
        let detach = try JSONEncoder().encode(AgentRequest.detach(netns: try NetnsName("ghost"), force: false))
        let reply = await api.respond(to: Array(detach))
        XCTAssertEqual(reply.errorCode, "not-found")
        XCTAssertTrue(reply.error!.contains("ghost"))
        let ping = await api.respond(to: Array(try JSONEncoder().encode(AgentRequest.ping)))
        XCTAssertNil(ping.error)
        XCTAssertEqual(ping.capture, CaptureSettings())
        let alloc = await api.respond(to: Array(try JSONEncoder().encode(AgentRequest.allocate(netns: try NetnsName("a")))))
        XCTAssertEqual(alloc.network?.podIP, IPAddress("10.250.0.2"))
        XCTAssertEqual(alloc.network?.gateway, IPAddress("10.250.0.1"))
    }
}
