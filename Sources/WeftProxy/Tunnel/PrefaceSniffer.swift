import NIOCore

/// A plaintext caller of a port declared `/http` may speak HTTP/1.1 or HTTP/2 with prior
/// knowledge (h2c). Where the destination serves HTTP per request (tracing or
/// AuthorizationPolicy on), its first bytes decide which gate it gets: the 24-byte HTTP/2
/// preface, or anything else (HTTP/1.1; its codec answers 400 to what is not HTTP). The bytes
/// read meanwhile go on to the gate once it is in place; nothing is read after the decision
/// until then.
final class PrefaceSniffer: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    /// Called once, on the loop, with whether the caller speaks HTTP/2; its future completes
    /// when the handlers that take the bytes are in the pipeline after this one.
    private let decided: (_ http2: Bool) -> EventLoopFuture<Void>
    private var buffered: ByteBuffer?
    private var done = false

    init(decided: @escaping (_ http2: Bool) -> EventLoopFuture<Void>) { self.decided = decided }

    /// Pure: whether `bytes` start the preface (nil: too few bytes to tell yet).
    static func isHTTP2(_ bytes: some Collection<UInt8>) -> Bool? {
        let preface = ProtocolSniff.http2Preface
        let n = min(bytes.count, preface.count)
        guard bytes.prefix(n).elementsEqual(preface.prefix(n)) else { return false }
        return n == preface.count ? true : nil
    }

    // Reads are off on accepted connections (the gate turns them on): ask for the first bytes,
    // now or once the connection is active (the handler may be added before it is).
    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { context.read() }
    }

    func channelActive(context: ChannelHandlerContext) {
        context.fireChannelActive()
        if !done { context.read() }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        if buffered == nil { buffered = bytes } else { buffered!.writeBuffer(&bytes) }
        guard !done else { return }
        guard let http2 = Self.isHTTP2(buffered!.readableBytesView) else { return context.read() }
        done = true
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        decided(http2).whenComplete { result in
            let (sniffer, context) = bound.value
            guard case .success = result else { return context.close(promise: nil) }
            if let bytes = sniffer.buffered {
                sniffer.buffered = nil
                context.fireChannelRead(sniffer.wrapInboundOut(bytes))
                context.fireChannelReadComplete()
            }
            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        // A caller that ends before it said anything decisive is gone.
        if !done, let e = event as? ChannelEvent, e == .inputClosed { return context.close(promise: nil) }
        context.fireUserInboundEventTriggered(event)
    }
}
