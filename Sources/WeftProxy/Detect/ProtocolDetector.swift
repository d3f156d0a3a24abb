import Foundation
import NIOCore
import NIOHTTP1
import WeftCore

/// Decides, per outbound connection, whether it takes the L7 path (HTTP/1.1, h2c) or is
/// forwarded as bytes — without ever making a server-first protocol wait.
///
/// On a port whose protocol is not declared, the upstream is dialled at once, in parallel
/// with reading the client:
/// - the client's first bytes decide (ProtocolSniff): HTTP goes to the L7 path (the early
///   upstream connection joins the HTTP/1.1 pool, or is closed for HTTP/2), anything else is
///   spliced to the early connection;
/// - if the server speaks first (a banner: SMTP, MySQL, SSH…), the connection is opaque
///   and the banner goes to the client straight away;
/// - a client that stops half-way through something that could be HTTP (`GE`…) for
///   `stallTimeout` is treated as opaque, so it is never stuck behind detection.
/// On ports declared `/http`, `/http2` or `/grpc` the client always speaks first: only
/// HTTP/1.1 versus HTTP/2 is sniffed, and no early connection is made.
final class ProtocolDetector {
    enum Mode {
        /// Declared HTTP: HTTP/2 preface → HTTP/2, anything else → HTTP/1.1 (whose codec
        /// answers 400 to what is not HTTP).
        case declaredHTTP
        /// Not declared: detect, dialling `target` at once.
        case detect(target: OriginalDestination)
    }

    static let stallTimeout: TimeAmount = .seconds(1)

    private let downstream: Channel
    private let workload: WorkloadContext
    private let original: OriginalDestination
    private let mode: Mode
    private let started: NIODeadline
    private var decided: SniffedProtocol?
    private var clientBytes: ByteBuffer?
    private var clientEOF = false
    private var serverBytes: ByteBuffer?
    private var serverEOF = false
    private var upstreamReset = false
    /// The early connection failed or closed before anyone spoke.
    private var upstreamGone = false
    private var upstream: Channel?
    private var upstreamFailure: Error?
    private var stallTimer: Scheduled<Void>?
    private var spliced = false
    private weak var downSniffer: FirstBytesHandler?
    private weak var upSniffer: FirstBytesHandler?

    private init(downstream: Channel, workload: WorkloadContext, original: OriginalDestination, mode: Mode) {
        self.downstream = downstream
        self.workload = workload
        self.original = original
        self.mode = mode
        self.started = downstream.eventLoop.now
    }

    /// Starts detection on an accepted connection whose reads are still off.
    static func start(_ downstream: Channel, workload: WorkloadContext, original: OriginalDestination, mode: Mode) {
        let detector = ProtocolDetector(downstream: downstream, workload: workload, original: original, mode: mode)
        detector.begin()
    }

    private func begin() {
        let sniffer = FirstBytesHandler(owner: self, side: .client)
        do {
            // The capture listeners already allow half-closure: a client's FIN is an event.
            try downstream.pipeline.syncOperations.addHandler(sniffer)
        } catch {
            _ = workload.refuse(downstream, direction: .outbound, reason: "cannot start protocol detection: \(error)")
            return
        }
        downSniffer = sniffer
        if case .detect(let target) = mode { dial(target) }
        // A port declared HTTP whose client says nothing (or too little to tell HTTP/1.1 from
        // HTTP/2) within the request-headers timeout is closed: it would hold a socket forever.
        if case .declaredHTTP = mode, let timeout = workload.requestHeadersTimeout {
            let bound = NIOLoopBound(self, eventLoop: downstream.eventLoop)
            stallTimer = downstream.eventLoop.scheduleTask(in: timeout) {
                let detector = bound.value
                guard detector.decided == nil else { return }
                detector.workload.logger.debug("HTTP connection closed: no request within \(timeout.nanoseconds / 1_000_000) ms",
                                               metadata: ["destination": "\(detector.original)"])
                detector.downstream.close(promise: nil)
            }
        }
        // An accepted channel may not be active yet (registration completes first); then the
        // sniffer asks for the first read from channelActive.
        if downstream.isActive { downstream.read() }
    }

    // MARK: - events

    func bytes(_ buffer: inout ByteBuffer, from side: FirstBytesHandler.Side) {
        switch side {
        case .client:
            if clientBytes == nil { clientBytes = buffer } else { clientBytes!.writeBuffer(&buffer) }
            guard decided == nil else { return }
            switch ProtocolSniff.classify(clientBytes!.readableBytesView) {
            case .needMore:
                armStallTimer()
            case .detected(let p):
                decide(p, by: "sniffed")
            }
        case .server:
            if serverBytes == nil { serverBytes = buffer } else { serverBytes!.writeBuffer(&buffer) }
            if decided == nil {
                workload.counters.serverFirst.add(1)
                decide(.opaque, by: "server-first")
            } else if decided == .http1 || decided == .http2 {
                upstream?.close(promise: nil)  // the early connection spoke unasked: not reusable
            }
        }
    }

    /// More client bytes are wanted while nothing is decided.
    var wantsClientBytes: Bool { decided == nil }

    func inputClosed(_ side: FirstBytesHandler.Side) {
        switch side {
        case .client:
            clientEOF = true
            if decided == nil {
                if case .declaredHTTP = mode { decide(.http1, by: "client-eof") } else { decide(.opaque, by: "client-eof") }
            }
        case .server:
            serverEOF = true
            if decided == nil { decide(.opaque, by: "server-first") }
        }
    }

    func inactive(_ side: FirstBytesHandler.Side) {
        switch side {
        case .client:
            if !spliced, decided == nil || decided == .tls || decided == .opaque {
                stallTimer?.cancel()
                decided = decided ?? .opaque
                upstream?.close(promise: nil)
            }
        case .server:
            guard !spliced else { return }
            if decided == nil {
                // The early connection died before either side spoke: the client's first
                // bytes still decide — HTTP gets an answer from the L7 path (503), anything
                // else (or silence, after stallTimeout) the close or reset.
                upstreamGone = true
                armStallTimer()
            } else if decided == .tls || decided == .opaque {
                stallTimer?.cancel()
                if upstreamReset { downstream.closeWithReset() } else { downstream.close(promise: nil) }
            }
        }
    }

    /// The early connection failed after connecting (typically reset by the peer).
    func upstreamError(_ error: Error) {
        upstreamReset = true
    }

    // MARK: - the early upstream connection

    private func dial(_ target: OriginalDestination) {
        let bound = NIOLoopBound(self, eventLoop: downstream.eventLoop)
        workload.dial(target, proto: "unknown") { _ in }.whenComplete { result in
            let detector = bound.value
            switch result {
            case .success(let channel): detector.connected(channel, target: target)
            case .failure(let error): detector.connectFailed(error, target: target)
            }
        }
    }

    private func connected(_ channel: Channel, target: OriginalDestination) {
        upstream = channel
        switch decided {
        case .http1?:
            recycle(channel, endpoint: target)
        case .http2?:
            channel.close(promise: nil)
        case .tls?, .opaque?:
            if downstream.isActive { splice() } else { channel.close(promise: nil) }
        case nil:
            guard downstream.isActive else { channel.close(promise: nil); return }
            // Watch for a server that speaks first.
            let sniffer = FirstBytesHandler(owner: self, side: .server)
            do {
                try channel.pipeline.syncOperations.addHandler(sniffer)
                upSniffer = sniffer
                channel.read()
            } catch {
                channel.close(promise: nil)
                _ = workload.refuse(downstream, direction: .outbound, reason: "upstream \(target): \(error)")
            }
        }
    }

    private func connectFailed(_ error: Error, target: OriginalDestination) {
        upstreamFailure = error
        switch decided {
        case .http1?, .http2?:
            break  // the L7 path dials its own upstreams
        case nil:
            upstreamGone = true  // decided by the client's first bytes, as above
            armStallTimer()
        default:
            stallTimer?.cancel()
            decided = decided ?? .opaque
            _ = workload.refuse(downstream, direction: .outbound, reason: "upstream \(target): \(WorkloadContext.describe(error))")
        }
    }

    /// An early connection to an endpoint the L7 path may use: it joins the HTTP/1.1 pool.
    private func recycle(_ channel: Channel, endpoint: OriginalDestination) {
        guard channel.isActive, serverBytes == nil else { channel.close(promise: nil); return }
        // A tunnel stream opened before the protocol was known was authorized by the peer as
        // a connection, not per request: the L7 path opens its own (as http/1.1).
        if (try? channel.pipeline.syncOperations.handler(type: TunnelStreamCodec.self)) != nil {
            channel.close(promise: nil)
            return
        }
        do {
            let sync = channel.pipeline.syncOperations
            if let up = upSniffer { sync.removeHandler(context: try sync.context(handler: up), promise: nil) }
            try sync.addHTTPClientHandlers()
            try sync.addHandler(UpstreamHTTPHandler())
            try channel.syncOptions?.setOption(.autoRead, value: true)
            workload.upstreamPool.value.give(channel, for: UpstreamKey(endpoint: endpoint, tunnel: nil))
        } catch {
            channel.close(promise: nil)
        }
    }

    // MARK: - the decision

    private func decide(_ p: SniffedProtocol, by reason: String) {
        var p = p
        if case .declaredHTTP = mode, p != .http2 { p = .http1 }
        decided = p
        stallTimer?.cancel()
        stallTimer = nil
        record(p, by: reason)
        switch p {
        case .http1, .http2:
            do {
                if p == .http1 {
                    try HTTPPath.startHTTP1(downstream, context: workload, original: original)
                } else {
                    try HTTPPath.startHTTP2(downstream, context: workload, original: original)
                }
            } catch {
                _ = workload.refuse(downstream, direction: .outbound, reason: "cannot start the HTTP path: \(error)")
                return
            }
            if let upstream {
                if p == .http1, case .detect(let target) = mode { recycle(upstream, endpoint: target) } else { upstream.close(promise: nil) }
            }
            downSniffer?.replayAndLeave(clientBytes, eof: clientEOF)
            clientBytes = nil
        case .tls, .opaque:
            if let failure = upstreamFailure {
                _ = workload.refuse(downstream, direction: .outbound, reason: "upstream: \(WorkloadContext.describe(failure))")
            } else if upstreamGone {
                if upstreamReset {
                    _ = workload.refuse(downstream, direction: .outbound, reason: "upstream \(original) reset the connection")
                } else {
                    downstream.close(promise: nil)
                }
            } else if upstream != nil {
                splice()
            }  // else: joined when the early connection completes
        }
    }

    private func splice() {
        guard !spliced, let upstream else { return }
        spliced = true
        do {
            try Splice.join(downstream: downstream, upstream: upstream,
                            downstreamReceived: workload.counters.bytesOutboundSent,
                            upstreamReceived: workload.counters.bytesOutboundReceived, idleTimeout: workload.idleTimeout)
        } catch {
            upstream.close(promise: nil)
            _ = workload.refuse(downstream, direction: .outbound, reason: "cannot join connections: \(error)")
            return
        }
        downSniffer?.replayAndLeave(clientBytes, eof: clientEOF)
        upSniffer?.replayAndLeave(serverBytes, eof: serverEOF)
        clientBytes = nil
        serverBytes = nil
    }

    /// Decides "opaque" if nothing else has after stallTimeout: a client stalled inside an
    /// HTTP-looking prefix, or a silent client whose early upstream connection failed.
    private func armStallTimer() {
        guard case .detect = mode, stallTimer == nil, decided == nil else { return }
        let bound = NIOLoopBound(self, eventLoop: downstream.eventLoop)
        stallTimer = downstream.eventLoop.scheduleTask(in: Self.stallTimeout) {
            let detector = bound.value
            if detector.decided == nil { detector.decide(.opaque, by: "timeout") }
        }
    }

    private func record(_ p: SniffedProtocol, by reason: String) {
        Self.record(p, by: reason, downstream: downstream, workload: workload, original: original,
                    detectNanos: (downstream.eventLoop.now - started).nanoseconds)
    }

    /// Counts a connection's protocol and logs it for `weft get connections`; also for
    /// ports whose protocol is declared (decided without sniffing).
    static func record(_ p: SniffedProtocol, by reason: String, downstream: Channel, workload: WorkloadContext,
                       original: OriginalDestination, detectNanos: Int64 = 0) {
        let counters = workload.counters
        switch p {
        case .http1: counters.protocolHTTP1.add(1)
        case .http2: counters.protocolHTTP2.add(1)
        case .tls: counters.protocolTLS.add(1)
        case .opaque: counters.protocolOpaque.add(1)
        }
        let client = downstream.remoteAddress.map { "\($0)" } ?? "?"
        workload.connections.add(ConnectionRecord(
            time: Date().timeIntervalSince1970, client: client, destination: "\(original)",
            proto: p.rawValue, decidedBy: reason, detectMillis: (Double(detectNanos) / 1e3).rounded() / 1000))
        workload.logger.debug("outbound protocol", metadata: [
            "client": "\(client)", "destination": "\(original)", "protocol": "\(p.rawValue)", "decidedBy": "\(reason)"])
    }
}

/// The first handler on a connection under detection: hands bytes and closes to the
/// detector, reads only while the detector wants more, then replays what it held into the
/// handlers added behind it and leaves the pipeline.
final class FirstBytesHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    enum Side { case client, server }

    private let owner: ProtocolDetector
    let side: Side
    private var context: ChannelHandlerContext?
    private var leaving = false

    init(owner: ProtocolDetector, side: Side) {
        self.owner = owner
        self.side = side
    }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }
    func handlerRemoved(context: ChannelHandlerContext) { self.context = nil }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if leaving { return context.fireChannelRead(data) }
        var buffer = unwrapInboundIn(data)
        owner.bytes(&buffer, from: side)
    }

    func channelActive(context: ChannelHandlerContext) {
        context.fireChannelActive()
        if !leaving, side == .client, owner.wantsClientBytes { context.read() }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if leaving { return context.fireChannelReadComplete() }
        if side == .client, owner.wantsClientBytes { context.read() }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if !leaving, let e = event as? ChannelEvent, e == .inputClosed {
            owner.inputClosed(side)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelInactive(context: ChannelHandlerContext) {
        owner.inactive(side)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if leaving { return context.fireErrorCaught(error) }
        if side == .server { owner.upstreamError(error) }
        context.close(promise: nil)
    }

    /// Passes the held bytes (and a held end of input) to the handlers behind, then leaves.
    func replayAndLeave(_ held: ByteBuffer?, eof: Bool) {
        guard let context, !leaving else { return }
        leaving = true
        if let held, held.readableBytes > 0 {
            context.fireChannelRead(NIOAny(held))
            context.fireChannelReadComplete()
        }
        if eof { context.fireUserInboundEventTriggered(ChannelEvent.inputClosed) }
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }
}
