import NIOCore
import NIOPosix
import XCTest
@testable import WeftProxy

/// The L4 glue over real loopback sockets (no root, no netns): bytes arrive intact and in
/// order under backpressure, a FIN travels through only after the data before it, and an
/// RST from one side becomes an RST on the other.
final class SpliceTests: XCTestCase {
    var group: MultiThreadedEventLoopGroup!

    override func setUp() { group = MultiThreadedEventLoopGroup(numberOfThreads: 1) }
    override func tearDown() { try? group.syncShutdownGracefully() }

    /// Reads everything until the peer half-closes, then answers with a summary and closes,
    /// or resets the connection on the first byte when `reset` is set.
    final class Backend: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        typealias OutboundOut = ByteBuffer
        var count = 0
        var sum: UInt64 = 0
        let reset: Bool
        init(reset: Bool) { self.reset = reset }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            if reset {
                context.channel.closeWithReset()
                return
            }
            let buf = unwrapInboundIn(data)
            count += buf.readableBytes
            for b in buf.readableBytesView { sum = sum &* 31 &+ UInt64(b) }
        }

        func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
            guard case ChannelEvent.inputClosed? = event as? ChannelEvent else { return }
            let reply = context.channel.allocator.buffer(string: "\(count) \(sum)")
            context.writeAndFlush(wrapOutboundOut(reply)).whenComplete { _ in context.close(promise: nil) }
        }
    }

    final class Collector: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = ByteBuffer
        var received = ""
        let done: EventLoopPromise<String>
        init(done: EventLoopPromise<String>) { self.done = done }
        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            received += String(buffer: unwrapInboundIn(data))
        }
        func channelInactive(context: ChannelHandlerContext) { done.succeed(received) }
        func errorCaught(context: ChannelHandlerContext, error: Error) { done.fail(error) }
    }

    func startBackend(reset: Bool) throws -> Channel {
        try ServerBootstrap(group: group)
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .childChannelInitializer { ch in ch.eventLoop.makeCompletedFuture { try ch.pipeline.syncOperations.addHandler(Backend(reset: reset)) } }
            .bind(host: "127.0.0.1", port: 0).wait()
    }

    func startProxy(to target: SocketAddress) throws -> Channel {
        let loop = group.next()
        return try ServerBootstrap(group: loop)
            .childChannelOption(.autoRead, value: false)
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .childChannelInitializer { down in
                down.eventLoop.execute {
                    ClientBootstrap(group: loop)
                        .channelOption(.autoRead, value: false)
                        .channelOption(.allowRemoteHalfClosure, value: true)
                        .connect(to: target)
                        .whenSuccess { up in try! Splice.join(downstream: down, upstream: up, downstreamReceived: nil, upstreamReceived: nil) }
                }
                return down.eventLoop.makeSucceededVoidFuture()
            }
            .bind(host: "127.0.0.1", port: 0).wait()
    }

    func connectClient(to address: SocketAddress) throws -> (Channel, EventLoopFuture<String>) {
        let done = group.next().makePromise(of: String.self)
        let ch = try ClientBootstrap(group: group)
            .channelOption(.allowRemoteHalfClosure, value: true)
            .channelInitializer { ch in ch.eventLoop.makeCompletedFuture { try ch.pipeline.syncOperations.addHandler(Collector(done: done)) } }
            .connect(to: address).wait()
        return (ch, done.futureResult)
    }

    func testLargeTransferThenHalfCloseArrivesIntact() throws {
        let backend = try startBackend(reset: false)
        let proxy = try startProxy(to: backend.localAddress!)
        let (client, reply) = try connectClient(to: proxy.localAddress!)
        var payload = ByteBufferAllocator().buffer(capacity: 1 << 20)
        var expected: UInt64 = 0
        for i in 0..<(1 << 20) {
            let b = UInt8(truncatingIfNeeded: i &* 7 &+ i >> 11)
            payload.writeInteger(b)
            expected = expected &* 31 &+ UInt64(b)
        }
        try client.writeAndFlush(payload).wait()
        try client.close(mode: .output).wait()
        XCTAssertEqual(try reply.wait(), "\(1 << 20) \(expected)")
        try proxy.close().wait()
        try backend.close().wait()
    }

    func testResetFromUpstreamResetsDownstream() throws {
        let backend = try startBackend(reset: true)
        let proxy = try startProxy(to: backend.localAddress!)
        let (client, reply) = try connectClient(to: proxy.localAddress!)
        try client.writeAndFlush(client.allocator.buffer(string: "hello")).wait()
        XCTAssertThrowsError(try reply.wait()) { error in
            XCTAssertEqual((error as? IOError)?.errnoCode, ECONNRESET, "\(error)")
        }
        try proxy.close().wait()
        try backend.close().wait()
    }
}
