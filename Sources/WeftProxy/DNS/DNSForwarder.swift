import Glibc
import Logging
import NIOCore
import NIOPosix
import Synchronization
import WeftCore

/// Sends queries that are not mesh names to the upstream resolver, from the agent's own
/// (host) network namespace — so a resolver on the host's loopback works, and a workload
/// cannot reach arbitrary resolvers through the proxy. UDP with fresh query IDs matched back
/// to callers; TCP (for callers that asked over TCP, e.g. after a truncated answer) with one
/// connection per query. A query with no answer in `timeout` gets SERVFAIL.
public final class DNSForwarder: Sendable {
    private struct Pending {
        let originalID: (UInt8, UInt8)
        let promise: EventLoopPromise<[UInt8]>
        let timeout: Scheduled<Void>
    }

    public let upstream: SocketAddress
    private let channel: Channel
    private let pending = Mutex<[UInt16: Pending]>([:])
    private let timeout: TimeAmount

    private init(upstream: SocketAddress, channel: Channel, timeout: TimeAmount) {
        self.upstream = upstream
        self.channel = channel
        self.timeout = timeout
    }

    /// Binds the forwarder's UDP socket (host netns, ephemeral port) on `group`.
    public static func start(upstream: SocketAddress, group: EventLoopGroup, timeout: TimeAmount = .seconds(5)) async throws -> DNSForwarder {
        let box = ForwarderBox()
        let channel = try await DatagramBootstrap(group: group)
            .channelInitializer { ch in
                ch.eventLoop.makeCompletedFuture { try ch.pipeline.syncOperations.addHandler(ReplyHandler(box: box)) }
            }
            .bind(host: upstream.protocol == .inet6 ? "::" : "0.0.0.0", port: 0).get()
        let forwarder = DNSForwarder(upstream: upstream, channel: channel, timeout: timeout)
        box.forwarder.withLock { $0 = forwarder }
        return forwarder
    }

    public func close() async {
        try? await channel.close()
        let all = pending.withLock { p -> [Pending] in defer { p.removeAll() }; return Array(p.values) }
        for p in all { p.timeout.cancel(); p.promise.fail(ChannelError.ioOnClosedChannel) }
    }

    /// Forwards a query over UDP; the answer carries the caller's original ID.
    public func forwardUDP(_ query: [UInt8]) -> EventLoopFuture<[UInt8]> {
        let loop = channel.eventLoop
        guard query.count >= 12 else { return loop.makeFailedFuture(DNSQuery.ParseError.tooShort) }
        let promise = loop.makePromise(of: [UInt8].self)
        var id: UInt16 = 0
        let registered = pending.withLock { p -> Bool in
            for _ in 0..<32 {
                id = UInt16.random(in: 0...UInt16.max)
                if p[id] == nil { break }
            }
            guard p[id] == nil else { return false }
            let chosen = id
            let timer = loop.scheduleTask(in: timeout) { [weak self] () -> Void in
                self?.complete(id: chosen, with: nil)
            }
            p[id] = Pending(originalID: (query[0], query[1]), promise: promise, timeout: timer)
            return true
        }
        guard registered else {
            promise.fail(WeftError(.exhausted, "too many DNS queries in flight"))
            return promise.futureResult
        }
        var rewritten = query
        rewritten[0] = UInt8(id >> 8)
        rewritten[1] = UInt8(id & 0xff)
        let envelope = AddressedEnvelope(remoteAddress: upstream, data: channel.allocator.buffer(bytes: rewritten))
        channel.writeAndFlush(envelope).whenFailure { [weak self] _ in self?.complete(id: id, with: nil) }
        return promise.futureResult
    }

    fileprivate func complete(id: UInt16, with reply: [UInt8]?) {
        guard let entry = pending.withLock({ $0.removeValue(forKey: id) }) else { return }
        entry.timeout.cancel()
        guard var reply, reply.count >= 12 else {
            entry.promise.fail(WeftError(.system, "no answer from upstream resolver \(upstream)"))
            return
        }
        reply[0] = entry.originalID.0
        reply[1] = entry.originalID.1
        entry.promise.succeed(reply)
    }

    /// Forwards a query over TCP (2-byte length framing, RFC 1035 §4.2.2).
    ///
    /// Callers run on a workload's loop, whose thread lives in the workload's netns, and NIO
    /// creates a socket on the calling thread: the connect is therefore submitted to this
    /// forwarder's own loop, in the host's netns. (A test catches the other way.)
    public func forwardTCP(_ query: [UInt8]) -> EventLoopFuture<[UInt8]> {
        let loop = channel.eventLoop
        let answer = loop.makePromise(of: [UInt8].self)
        loop.execute { self.connectTCP(query, answer: answer) }
        return answer.futureResult
    }

    private func connectTCP(_ query: [UInt8], answer: EventLoopPromise<[UInt8]>) {
        let loop = channel.eventLoop
        loop.preconditionInEventLoop()
        ClientBootstrap(group: loop)
            .connectTimeout(timeout)
            .channelInitializer { ch in
                ch.eventLoop.makeCompletedFuture {
                    try ch.pipeline.syncOperations.addHandler(ByteToMessageHandler(DNSLengthFrameDecoder()))
                    try ch.pipeline.syncOperations.addHandler(TCPAnswerHandler(promise: answer))
                }
            }
            .connect(to: upstream)
            .whenComplete { result in
                switch result {
                case .success(let ch):
                    var buf = ch.allocator.buffer(capacity: query.count + 2)
                    buf.writeInteger(UInt16(query.count))
                    buf.writeBytes(query)
                    ch.writeAndFlush(buf, promise: nil)
                    let timer = ch.eventLoop.scheduleTask(in: self.timeout) {
                        answer.fail(WeftError(.system, "no answer from upstream resolver \(self.upstream) over TCP"))
                        ch.close(promise: nil)
                    }
                    answer.futureResult.whenComplete { _ in timer.cancel(); ch.close(promise: nil) }
                case .failure(let error):
                    answer.fail(error)
                }
            }
    }
}

private final class ForwarderBox: Sendable {
    let forwarder = Mutex<DNSForwarder?>(nil)
}

private final class ReplyHandler: ChannelInboundHandler {
    typealias InboundIn = AddressedEnvelope<ByteBuffer>
    let box: ForwarderBox
    init(box: ForwarderBox) { self.box = box }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let envelope = unwrapInboundIn(data)
        let bytes = Array(envelope.data.readableBytesView)
        guard bytes.count >= 12, let forwarder = box.forwarder.withLock({ $0 }),
              envelope.remoteAddress == forwarder.upstream else { return }
        forwarder.complete(id: UInt16(bytes[0]) << 8 | UInt16(bytes[1]), with: bytes)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        // ICMP port unreachable and the like: the pending query times out into SERVFAIL.
    }
}

private final class TCPAnswerHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    let promise: EventLoopPromise<[UInt8]>
    init(promise: EventLoopPromise<[UInt8]>) { self.promise = promise }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        promise.succeed(Array(unwrapInboundIn(data).readableBytesView))
    }

    func channelInactive(context: ChannelHandlerContext) {
        promise.fail(WeftError(.system, "upstream resolver closed the TCP connection without answering"))
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        promise.fail(error)
        context.close(promise: nil)
    }
}

/// 2-byte length-prefixed DNS messages over TCP; refuses lengths under a header's size.
struct DNSLengthFrameDecoder: ByteToMessageDecoder {
    typealias InboundOut = ByteBuffer

    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let length = buffer.getInteger(at: buffer.readerIndex, as: UInt16.self) else { return .needMoreData }
        guard length >= 12 else { throw DNSQuery.ParseError.tooShort }
        guard buffer.readableBytes >= Int(length) + 2 else { return .needMoreData }
        buffer.moveReaderIndex(forwardBy: 2)
        context.fireChannelRead(wrapInboundOut(buffer.readSlice(length: Int(length))!))
        return .continue
    }
}
