import Glibc
import Logging
import NIOCore
import NIOPosix
import WeftCore

/// The DNS proxy of one workload: UDP and TCP on 127.0.0.1:15053 inside its netns (port 53
/// is redirected there by the capture rules). Bound to 127.0.0.1, not 0.0.0.0: replies must
/// leave from the address the REDIRECT rewrote to, or connected UDP clients drop them.
/// Mesh names are answered here; the rest goes to the DNSForwarder.
struct DNSResponder: Sendable {
    let namespace: MeshNamespace
    let directory: ServiceDirectory
    let forwarder: DNSForwarder?
    let counters: ProxyCounters

    func decide(_ query: [UInt8]) -> DNSDecision {
        DNSAnswers.decide(query, callerNamespace: namespace) { name, ns in directory.lookup(name: name, namespace: ns) }
    }

    /// The answer to send back, or nil for none. SERVFAIL when the upstream fails.
    func respond(to query: [UInt8], on loop: EventLoop, tcp: Bool) -> EventLoopFuture<[UInt8]?> {
        switch decide(query) {
        case .answer(let bytes):
            counters.dnsAnswered.add(1)
            return loop.makeSucceededFuture(bytes)
        case .drop:
            counters.dnsMalformed.add(1)
            return loop.makeSucceededFuture(nil)
        case .forward:
            counters.dnsForwarded.add(1)
            guard let forwarder else { return loop.makeSucceededFuture(Self.servFail(query)) }
            let future = tcp ? forwarder.forwardTCP(query) : forwarder.forwardUDP(query)
            return future.hop(to: loop).map { Optional($0) }.recover { _ in Self.servFail(query) }
        }
    }

    static func servFail(_ query: [UInt8]) -> [UInt8]? {
        guard let q = try? DNSQuery(parsing: query) else { return DNSQuery.formatError(for: query) }
        return q.response(rcode: .servFail, addresses: [])
    }
}

final class DNSUDPHandler: ChannelInboundHandler {
    typealias InboundIn = AddressedEnvelope<ByteBuffer>
    typealias OutboundOut = AddressedEnvelope<ByteBuffer>
    let responder: DNSResponder

    init(responder: DNSResponder) { self.responder = responder }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let envelope = unwrapInboundIn(data)
        let channel = context.channel
        responder.respond(to: Array(envelope.data.readableBytesView), on: context.eventLoop, tcp: false).whenSuccess { reply in
            guard let reply else { return }
            channel.writeAndFlush(AddressedEnvelope(remoteAddress: envelope.remoteAddress, data: channel.allocator.buffer(bytes: reply)),
                                  promise: nil)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        // A bad datagram affects only itself; the socket keeps serving.
    }
}

final class DNSTCPHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    let responder: DNSResponder

    init(responder: DNSResponder) { self.responder = responder }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let channel = context.channel
        responder.respond(to: Array(unwrapInboundIn(data).readableBytesView), on: context.eventLoop, tcp: true).whenSuccess { reply in
            guard let reply else { channel.close(promise: nil); return }
            var out = channel.allocator.buffer(capacity: reply.count + 2)
            out.writeInteger(UInt16(reply.count))
            out.writeBytes(reply)
            channel.writeAndFlush(out, promise: nil)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }
}
