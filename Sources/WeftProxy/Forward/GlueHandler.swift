import Glibc
import NIOCore
import Foundation
import NIOPosix
import WeftCore
import WeftTelemetry

/// Joins two TCP channels into one byte pipe (the L4 path). Sits alone in each pipeline.
///
/// Backpressure: a side reads only while its partner is writable, so a slow reader on one
/// end slows the sender on the other instead of growing buffers. Half-close: a FIN from one
/// side becomes a FIN to the other once everything before it has been written (the write of
/// an empty buffer orders the shutdown after pending data). Reset: an error on one side
/// resets the other (SO_LINGER 0), so the app sees what the remote end did.
final class GlueHandler {
    private var partner: GlueHandler?
    private var context: ChannelHandlerContext?
    private var pendingRead = false
    /// Where bytes read on this side are counted (nil: not counted). A direct reference
    /// rather than a closure: this runs once per read on the hot path.
    private let received: Counter?
    /// The connection's Istio TCP series: the downstream side's reads are the request
    /// bytes (received), the upstream side's the response bytes (sent).
    private let tally: TCPTally?
    private let isDownstream: Bool
    /// Shared by the pair when an idle timeout applies.
    var idle: IdleWatch?

    private init(received: Counter?, tally: TCPTally?, isDownstream: Bool) {
        self.received = received
        self.tally = tally
        self.isDownstream = isDownstream
    }

    /// A linked pair; the first goes in the downstream pipeline, the second upstream.
    static func matchedPair(downstreamReceived: Counter?, upstreamReceived: Counter?, tally: TCPTally? = nil)
        -> (GlueHandler, GlueHandler)
    {
        let down = GlueHandler(received: downstreamReceived, tally: tally, isDownstream: true)
        let up = GlueHandler(received: upstreamReceived, tally: tally, isDownstream: false)
        down.partner = up
        up.partner = down
        return (down, up)
    }

    // MARK: - called by the partner

    private func partnerWrite(_ data: NIOAny) {
        context?.write(data, promise: nil)
    }

    private func partnerFlush() {
        context?.flush()
    }

    private func partnerShutdownOutput() {
        guard let context else { return }
        let promise = context.eventLoop.makePromise(of: Void.self)
        context.writeAndFlush(NIOAny(context.channel.allocator.buffer(capacity: 0)), promise: promise)
        promise.futureResult.assumeIsolatedUnsafeUnchecked().whenComplete { _ in
            context.close(mode: .output, promise: nil)
        }
    }

    private func partnerClose(reset: Bool) {
        guard let context else { return }
        if reset {
            context.channel.closeWithReset()
            return
        }
        // Let queued data drain first, then close.
        let promise = context.eventLoop.makePromise(of: Void.self)
        context.writeAndFlush(NIOAny(context.channel.allocator.buffer(capacity: 0)), promise: promise)
        promise.futureResult.assumeIsolatedUnsafeUnchecked().whenComplete { _ in
            context.close(promise: nil)
        }
    }

    private var partnerWritable: Bool {
        context?.channel.isWritable ?? false
    }

    private func partnerBecameWritable() {
        if pendingRead {
            pendingRead = false
            context?.read()
        }
    }
}

extension GlueHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        self.partner = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let bytes = unwrapInboundIn(data).readableBytes
        received?.add(bytes)
        idle?.activity &+= 1
        if let tally {
            if isDownstream { tally.received(bytes) } else { tally.sent(bytes) }
        }
        partner?.partnerWrite(data)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        partner?.partnerFlush()
    }

    func channelInactive(context: ChannelHandlerContext) {
        tally?.close()
        partner?.partnerClose(reset: false)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, case .inputClosed = event {
            partner?.partnerShutdownOutput()
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        let reset = (error as? IOError)?.errnoCode == ECONNRESET
        partner?.partnerClose(reset: reset)
        context.close(promise: nil)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable {
            partner?.partnerBecameWritable()
        }
    }

    func read(context: ChannelHandlerContext) {
        if partner?.partnerWritable ?? false {
            context.read()
        } else {
            pendingRead = true
        }
    }
}

extension Channel {
    /// Closes with SO_LINGER 0 so the peer gets an RST instead of a FIN.
    func closeWithReset() {
        let linger0 = linger(l_onoff: 1, l_linger: 0)
        if let provider = self as? SocketOptionProvider {
            provider.setSoLinger(linger0).whenComplete { _ in self.close(promise: nil) }
        } else {
            close(promise: nil)
        }
    }
}

/// One spliced connection in Istio's TCP metrics and the access log: opened when created,
/// bytes counted as they flow, closed (and logged) once. Confined to the connection's loop
/// (both glue handlers share it).
final class TCPTally {
    private let series: MeshMetrics.TCPSeries?
    private let accessLog: AccessLog?
    private let labels: MeshLabels
    private let started = Date()
    private let startedAt = NIODeadline.now()
    private let downstream: String?
    private let upstream: String
    private var bytesReceived = 0
    private var bytesSent = 0
    private var closed = false

    /// nil when neither metrics nor the access log are on.
    init?(_ labels: MeshLabels, telemetry: WorkloadTelemetry?, downstream: Channel, upstream: OriginalDestination) {
        guard let telemetry, telemetry.metrics != nil || telemetry.accessLog != nil else { return nil }
        self.labels = labels
        series = telemetry.metrics?.tcpOpened(labels)
        accessLog = telemetry.accessLog
        self.downstream = downstream.remoteAddress.map { "\($0.ipAddress ?? "?"):\($0.port ?? 0)" }
        self.upstream = "\(upstream)"
    }

    func received(_ n: Int) {
        bytesReceived += n
        series?.add(sent: 0, received: n)
    }

    func sent(_ n: Int) {
        bytesSent += n
        series?.add(sent: n, received: 0)
    }

    func close() {
        guard !closed else { return }
        closed = true
        series?.close()
        accessLog?.connection(ConnectionLogEntry(startTime: started, bytesReceived: bytesReceived, bytesSent: bytesSent,
                                                 durationMilliseconds: Double((NIODeadline.now() - startedAt).nanoseconds) / 1e6,
                                                 downstreamAddress: downstream, upstreamHost: upstream, labels: labels))
    }
}
