import NIOCore
import NIOHTTP1
import NIOHTTP2
import WeftCore

/// HTTP/2 (prior knowledge, cleartext) upstream connections of one workload: one
/// multiplexed connection per endpoint, a new stream per request. Loop-confined. A
/// connection leaves the pool when it closes or when the upstream sends GOAWAY (streams
/// already open on it finish there; new ones get a fresh connection). Streams are
/// HTTP/1-shaped (HTTP2FramePayloadToHTTP1ClientCodec), so the same proxy handler that
/// drives HTTP/1.1 exchanges drives them, trailers included.
final class H2UpstreamPool {
    private enum Entry {
        case connecting([EventLoopPromise<NIOHTTP2Handler.StreamMultiplexer>])
        case ready(Channel, NIOHTTP2Handler.StreamMultiplexer)
    }

    private var entries: [UpstreamKey: Entry] = [:]

    /// A new request stream to `endpoint`, its pipeline ending in an UpstreamHTTPHandler.
    func openStream(to endpoint: UpstreamKey, workload: WorkloadContext) -> EventLoopFuture<Channel> {
        let loop = workload.loop.loop
        return multiplexer(for: endpoint, workload: workload).flatMap { mux in
            let promise = loop.makePromise(of: Channel.self)
            mux.createStreamChannel(promise: promise) { stream in
                stream.eventLoop.makeCompletedFuture {
                    try UpstreamHTTP2Stream.addDecoding(to: stream.pipeline.syncOperations)
                    try stream.pipeline.syncOperations.addHandler(UpstreamHTTPHandler())
                }
            }
            return promise.futureResult
        }
    }

    private func multiplexer(for endpoint: UpstreamKey, workload: WorkloadContext) -> EventLoopFuture<NIOHTTP2Handler.StreamMultiplexer> {
        let loop = workload.loop.loop
        switch entries[endpoint] {
        case .ready(let channel, let mux) where channel.isActive:
            return loop.makeSucceededFuture(mux)
        case .connecting(var waiters):
            let promise = loop.makePromise(of: NIOHTTP2Handler.StreamMultiplexer.self)
            waiters.append(promise)
            entries[endpoint] = .connecting(waiters)
            return promise.futureResult
        case .ready, nil:
            break
        }
        let promise = loop.makePromise(of: NIOHTTP2Handler.StreamMultiplexer.self)
        entries[endpoint] = .connecting([promise])
        let bound = NIOLoopBound(self, eventLoop: loop)
        // Through the mesh tunnel to a meshed peer (HTTP/2 inside one of its streams), else TCP.
        workload.dial(endpoint, proto: "h2c") { channel in
            let sync = channel.pipeline.syncOperations
            let drain = HTTP2DrainHandler(sendsGoAway: false)
            _ = try sync.configureHTTP2Pipeline(mode: .client, connectionConfiguration: .init(), streamConfiguration: .init(),
                                                streamDelegate: drain) { pushed in
                pushed.close()  // push is disabled in our settings; refuse any stream the server opens
            }
            let watcher = GoAwayWatcher()
            watcher.onGoAway = {
                bound.value.forget(endpoint, channel: channel)
            }
            try sync.addHandler(watcher)
            try sync.addHandler(drain)
            try sync.addHandler(CloseWhenPeerEnds())
        }.whenComplete { result in
            let pool = bound.value
            switch result {
            case .success(let channel):
                channel.closeFuture.whenComplete { _ in bound.value.forget(endpoint, channel: channel) }
                _ = channel.setOption(.autoRead, value: true)
                do {
                    let mux = try channel.pipeline.syncOperations.handler(type: NIOHTTP2Handler.self).syncMultiplexer()
                    pool.finish(endpoint, with: .success((channel, mux)))
                } catch {
                    channel.close(promise: nil)
                    pool.finish(endpoint, with: .failure(error))
                }
            case .failure(let error):
                pool.finish(endpoint, with: .failure(error))
            }
        }
        return promise.futureResult
    }

    private func finish(_ endpoint: UpstreamKey, with result: Result<(Channel, NIOHTTP2Handler.StreamMultiplexer), Error>) {
        guard case .connecting(let waiters) = entries[endpoint] else { return }
        switch result {
        case .success(let (channel, mux)):
            entries[endpoint] = .ready(channel, mux)
            for w in waiters { w.succeed(mux) }
        case .failure(let error):
            entries[endpoint] = nil
            for w in waiters { w.fail(error) }
        }
    }

    /// The connection is closing or draining: new streams go to a new one.
    private func forget(_ endpoint: UpstreamKey, channel: Channel) {
        if case .ready(let current, _) = entries[endpoint], current === channel { entries[endpoint] = nil }
    }

    func closeAll() {
        for case .ready(let channel, _) in entries.values { channel.close(promise: nil) }
        entries.removeAll()
    }

    /// The workload drains: no new streams on these connections (a retry gets a fresh one);
    /// each closes once its last stream has ended (HTTP2DrainHandler).
    func drain() {
        for case .ready(let channel, _) in entries.values { channel.pipeline.fireUserInboundEventTriggered(ProxyDrainEvent()) }
        entries.removeAll()
    }
}

/// How an upstream HTTP/2 stream's responses are decoded (the proxy's pool and weft-fuzz use
/// this one function, so the fuzzer runs what the proxy runs).
public enum UpstreamHTTP2Stream {
    public static func addDecoding(to pipeline: ChannelPipeline.SynchronousOperations) throws {
        try pipeline.addHandler(ResponseStatusGuard())
        try pipeline.addHandler(HTTP2FramePayloadToHTTP1ClientCodec(httpProtocol: .http))
    }
}

/// Before NIO's HTTP/1-shaped client codec on an upstream stream: a response whose `:status`
/// is not three digits is a stream error (RST_STREAM, the request gets 503), never passed on.
/// swift-nio-http2 (1.x) force-unwraps the first character of `:status` when it classifies a
/// response, so an upstream answering `:status: ""` crashed the whole agent — found by
/// weft-fuzz (`http2-client`).
final class ResponseStatusGuard: ChannelInboundHandler {
    typealias InboundIn = HTTP2Frame.FramePayload
    typealias InboundOut = HTTP2Frame.FramePayload

    struct MalformedStatus: Error, CustomStringConvertible {
        let value: String
        var description: String { "upstream sent a malformed :status \"\(value.prefix(16))\"" }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .headers(let h) = unwrapInboundIn(data) {
            for value in h.headers[":status"] where !Self.valid(value) {
                context.fireErrorCaught(MalformedStatus(value: value))
                context.close(promise: nil)
                return
            }
        }
        context.fireChannelRead(data)
    }

    static func valid(_ status: String) -> Bool {
        let u = status.utf8
        return u.count == 3 && u.allSatisfy { $0 >= 0x30 && $0 <= 0x39 }
    }
}

/// Last on an upstream HTTP/2 connection: a connection error (NIO's handler reports it
/// after its GOAWAY) or the upstream ending its side (a FIN, or END_STREAM when the
/// connection runs inside a mesh-tunnel stream) closes the connection, so every request on
/// it fails over at once. Without it, a connection carried by a tunnel stream stayed open
/// after the upstream closed or broke the protocol, and its requests hung (found by
/// HTTP2ConformanceTests' hostile upstream).
final class CloseWhenPeerEnds: ChannelInboundHandler {
    typealias InboundIn = Any

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        context.fireChannelRead(data)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let e = event as? ChannelEvent, case .inputClosed = e {
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }
}

/// Sits after the HTTP/2 handler on an upstream connection, where connection-level frames
/// arrive, and reports GOAWAY.
final class GoAwayWatcher: ChannelInboundHandler {
    typealias InboundIn = HTTP2Frame
    var onGoAway: (() -> Void)?

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .goAway = unwrapInboundIn(data).payload { onGoAway?() }
        context.fireChannelRead(data)
    }
}
