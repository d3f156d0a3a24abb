import NIOCore
import NIOEmbedded
import XCTest
@testable import WeftProxy

final class TunnelWriteCoalescerTests: XCTestCase {
    func testSmallWritesOfOneFlushBecomeOneBufferInOrder() throws {
        let channel = EmbeddedChannel(handler: TunnelWriteCoalescer())
        defer { _ = try? channel.finish() }
        let header = channel.allocator.buffer(string: "HEADER..."), payload = channel.allocator.buffer(string: "payload")
        let p1 = channel.eventLoop.makePromise(of: Void.self), p2 = channel.eventLoop.makePromise(of: Void.self)
        channel.write(IOData.byteBuffer(header), promise: p1)
        channel.write(IOData.byteBuffer(payload), promise: p2)
        XCTAssertNil(try channel.readOutbound(as: IOData.self), "nothing passes before the flush")
        channel.flush()
        channel.embeddedEventLoop.run()
        guard case .byteBuffer(let joined)? = try channel.readOutbound(as: IOData.self) else { return XCTFail("no write") }
        XCTAssertEqual(String(buffer: joined), "HEADER...payload")
        XCTAssertNil(try channel.readOutbound(as: IOData.self), "one buffer for the whole flush")
        XCTAssertNoThrow(try p1.futureResult.wait())
        XCTAssertNoThrow(try p2.futureResult.wait())
    }

    func testLargeWritesPassThroughAfterWhatCameBefore() throws {
        let channel = EmbeddedChannel(handler: TunnelWriteCoalescer())
        defer { _ = try? channel.finish() }
        let small = channel.allocator.buffer(string: "head")
        let large = channel.allocator.buffer(repeating: 0x61, count: TunnelWriteCoalescer.limit + 1)
        channel.write(IOData.byteBuffer(small), promise: nil)
        channel.write(IOData.byteBuffer(large), promise: nil)
        channel.write(IOData.byteBuffer(small), promise: nil)
        channel.flush()
        channel.embeddedEventLoop.run()
        var sizes: [Int] = []
        while let out = try channel.readOutbound(as: IOData.self) { sizes.append(out.readableBytes) }
        XCTAssertEqual(sizes, [4, TunnelWriteCoalescer.limit + 1, 4])
    }

    func testAFlushNeverExceedsOneRecord() throws {
        let channel = EmbeddedChannel(handler: TunnelWriteCoalescer())
        defer { _ = try? channel.finish() }
        let chunk = channel.allocator.buffer(repeating: 0x62, count: 6000)
        for _ in 0..<5 { channel.write(IOData.byteBuffer(chunk), promise: nil) }
        channel.flush()
        channel.embeddedEventLoop.run()
        var sizes: [Int] = []
        while let out = try channel.readOutbound(as: IOData.self) { sizes.append(out.readableBytes) }
        XCTAssertEqual(sizes.reduce(0, +), 30000)
        XCTAssertTrue(sizes.allSatisfy { $0 <= TunnelWriteCoalescer.limit }, "\(sizes)")
    }

    /// Streams of one tunnel connection that flush in the same batch of events share one
    /// write: the flush goes down once the loop has run what is pending, not per stream.
    func testFlushesOfOneLoopIterationShareOneWrite() throws {
        let channel = EmbeddedChannel(handler: TunnelWriteCoalescer())
        defer { _ = try? channel.finish() }
        let promise = channel.eventLoop.makePromise(of: Void.self)
        channel.write(IOData.byteBuffer(channel.allocator.buffer(string: "stream 1;")), promise: nil)
        channel.flush()
        channel.write(IOData.byteBuffer(channel.allocator.buffer(string: "stream 3;")), promise: promise)
        channel.flush()
        XCTAssertNil(try channel.readOutbound(as: IOData.self), "held until the loop's pending work runs")
        channel.embeddedEventLoop.run()
        guard case .byteBuffer(let joined)? = try channel.readOutbound(as: IOData.self) else { return XCTFail("no write") }
        XCTAssertEqual(String(buffer: joined), "stream 1;stream 3;")
        XCTAssertNil(try channel.readOutbound(as: IOData.self))
        XCTAssertNoThrow(try promise.futureResult.wait())
        // A later flush is not lost.
        channel.write(IOData.byteBuffer(channel.allocator.buffer(string: "later")), promise: nil)
        channel.flush()
        channel.embeddedEventLoop.run()
        guard case .byteBuffer(let later)? = try channel.readOutbound(as: IOData.self) else { return XCTFail("later write lost") }
        XCTAssertEqual(String(buffer: later), "later")
    }
}
