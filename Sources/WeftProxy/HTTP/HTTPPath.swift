import NIOCore
import NIOHTTP1
import NIOHTTP2
import WeftCore

/// Turns an accepted app connection into an L7 one. Called by ProtocolDetector once the
/// protocol is known; the detector then replays the bytes it has already read into the
/// handlers added here.
enum HTTPPath {
    /// HTTP/1.1: NIO's server codec and its protocol error handler (malformed HTTP gets a 400
    /// and the connection closes), then the proxy handler, which also keeps pipelined
    /// requests in order.
    static func startHTTP1(_ downstream: Channel, context: WorkloadContext, original: OriginalDestination) throws {
        let sync = downstream.pipeline.syncOperations
        try sync.addHandler(WireBytesCounter(read: context.counters.bytesOutboundSent, written: context.counters.bytesOutboundReceived))
        // Pipelining is ordered by the proxy handler itself: NIO's pipelining handler would stop
        // reads during every response (two epoll_ctl calls per request).
        // No outbound header validation (a pass over every header byte per response): what
        // this connection writes was parsed by NIO's decoder from the upstream, which refuses
        // what the validator would, or comes from the config, checked when read
        // (HTTPFieldSyntax); HeaderRelayTests pins the decoder's side.
        try sync.configureHTTPServerPipeline(withPipeliningAssistance: false, withErrorHandling: true, withOutboundHeaderValidation: false)
        try sync.addHandler(HTTPOutboundProxyHandler(workload: context, original: original, upstreams: .http1(context.upstreamPool.value)))
        // One read per readiness event: a request head fits one read, and a second read()
        // would only return EAGAIN (a wasted syscall per request).
        try downstream.syncOptions?.setOption(.maxMessagesPerRead, value: 1)
        try downstream.syncOptions?.setOption(.autoRead, value: true)
    }

    /// HTTP/2 with prior knowledge (h2c, gRPC): NIO's HTTP/2 server, one child channel per
    /// stream, each driven by the same proxy handler as HTTP/1.1 (through NIO's HTTP/1-shaped
    /// stream codec) against a multiplexed HTTP/2 upstream. Protocol errors end the
    /// connection with GOAWAY (NIO's handler).
    static func startHTTP2(_ downstream: Channel, context: WorkloadContext, original: OriginalDestination) throws {
        let sync = downstream.pipeline.syncOperations
        try sync.addHandler(WireBytesCounter(read: context.counters.bytesOutboundSent, written: context.counters.bytesOutboundReceived))
        let drain = HTTP2DrainHandler(sendsGoAway: true)
        _ = try sync.configureHTTP2Pipeline(mode: .server, connectionConfiguration: .init(), streamConfiguration: .init(),
                                            streamDelegate: drain) { stream in
            stream.eventLoop.makeCompletedFuture {
                try stream.pipeline.syncOperations.addHandler(HTTP2FramePayloadToHTTP1ServerCodec())
                try stream.pipeline.syncOperations.addHandler(
                    HTTPOutboundProxyHandler(workload: context, original: original, upstreams: .http2(context.h2Pool.value)))
            }
        }
        try sync.addHandler(drain)
        // An HTTP/2 client that shuts its side is gone: no half-open connection (the capture
        // listener allows half-closure for the byte path). Left half-open, its streams — and
        // the upstream streams they hold — were never closed: a client could pin an
        // upstream's whole stream budget by opening streams and hanging up (found by
        // HTTP2ConformanceTests).
        try downstream.syncOptions?.setOption(.allowRemoteHalfClosure, value: false)
        try downstream.syncOptions?.setOption(.autoRead, value: true)
    }
}

/// Counts an L7 connection's bytes as they are on the wire (headers and framing included),
/// like the L4 path counts them.
final class WireBytesCounter: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let read: Counter
    private let written: Counter
    /// Bytes read on this connection (the request-headers timer tells idle from slow with it).
    private(set) var bytesRead = 0

    init(read: Counter, written: Counter) {
        self.read = read
        self.written = written
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let n = unwrapInboundIn(data).readableBytes
        bytesRead &+= n
        read.add(n)
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        written.add(unwrapOutboundIn(data).readableBytes)
        context.write(data, promise: promise)
    }
}
