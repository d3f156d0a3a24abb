import NIOCore

/// Between HTTP/2 and TLS on a tunnel connection: holds flushes until the loop has handled its
/// current batch of events, so the streams answered together share one write, and joins the
/// small writes of a flush into one buffer, so TLS seals one record where it would seal one
/// per write. HTTP/2 writes every DATA frame as two buffers (its 9-byte header, then the
/// payload), and NIOSSL makes a TLS record of each write: without this, a request costs twice
/// the records, AEAD seals and TLS overhead bytes. Writes larger than one record pass through
/// untouched (no copy), in order.
final class TunnelWriteCoalescer: ChannelOutboundHandler, RemovableChannelHandler {
    typealias OutboundIn = IOData
    typealias OutboundOut = IOData

    /// What fits in one TLS record, with room for its overhead.
    static let limit = 16 * 1024 - 256

    private var pending: ByteBuffer?
    private var promises: [EventLoopPromise<Void>] = []

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        guard case .byteBuffer(let buffer) = unwrapOutboundIn(data), buffer.readableBytes <= Self.limit else {
            drain(context)
            context.write(data, promise: promise)
            return
        }
        if let current = pending?.readableBytes, current + buffer.readableBytes > Self.limit { drain(context) }
        if pending == nil {
            var fresh = context.channel.allocator.buffer(capacity: max(1024, min(Self.limit, buffer.readableBytes * 4)))
            fresh.writeImmutableBuffer(buffer)
            pending = fresh
        } else {
            pending!.writeImmutableBuffer(buffer)
        }
        if let promise { promises.append(promise) }
    }

    private var flushScheduled = false
    private var removed = false

    /// The flush goes down once the loop has handled every event of this wake-up: the streams
    /// of one tunnel connection answered in the same batch of events (each stream flushes on
    /// its own) share one write and as few TLS records as fit, instead of a record and a
    /// system call each.
    func flush(context: ChannelHandlerContext) {
        guard !flushScheduled else { return }
        flushScheduled = true
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        context.eventLoop.execute {
            let (handler, context) = bound.value
            handler.flushScheduled = false
            guard !handler.removed else { return }
            handler.drain(context)
            context.flush()
        }
    }

    func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        drain(context)
        // What a held flush covered (a GOAWAY, the last frames) goes out before the close.
        if flushScheduled { context.flush() }
        context.close(mode: mode, promise: promise)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        drain(context)
        removed = true
    }

    /// Passes the joined buffer down, its promise completing every joined write's.
    private func drain(_ context: ChannelHandlerContext) {
        guard let buffer = pending else { return }
        pending = nil
        let waiting = promises
        promises.removeAll(keepingCapacity: true)
        let promise: EventLoopPromise<Void>?
        switch waiting.count {
        case 0: promise = nil
        case 1: promise = waiting[0]
        default:
            let joined = context.eventLoop.makePromise(of: Void.self)
            for p in waiting { joined.futureResult.cascade(to: p) }
            promise = joined
        }
        context.write(wrapOutboundOut(.byteBuffer(buffer)), promise: promise)
    }
}
