import NIOCore
import NIOHTTP1
import NIOHTTP2
import WeftConfig
import WeftCore

extension InboundAuthorization {
    /// HTTP/2 with prior knowledge (h2c, gRPC) at the destination, when AuthorizationPolicy
    /// applies or tracing is on: the caller's connection (a tunnel stream, or plaintext) is
    /// served as HTTP/2, and each of its streams goes through its own `AuthorizationGate` —
    /// decided request by request (403 on that stream only), given a server span — and is
    /// relayed on a stream of one HTTP/2 connection to the app, trailers intact. Both sides
    /// are HTTP/1-shaped (NIO's stream codecs), so the gate is the one HTTP/1.1 uses.
    static func startHTTP2Gate(downstream: Channel, app: Channel, workload: WorkloadContext, principal: String?,
                               source: IPAddress?, port: UInt16, policies: [AuthorizationPolicy]) throws {
        let appSync = app.pipeline.syncOperations
        let appDrain = HTTP2DrainHandler(sendsGoAway: false)
        let mux = try appSync.configureHTTP2Pipeline(mode: .client, connectionConfiguration: .init(), streamConfiguration: .init(),
                                                     streamDelegate: appDrain) { pushed in
            pushed.close()  // push is off in our settings; a stream the app opens is refused
        }
        try appSync.addHandler(appDrain)
        try appSync.addHandler(CloseWhenPeerEnds())

        let sync = downstream.pipeline.syncOperations
        let drain = HTTP2DrainHandler(sendsGoAway: true)
        _ = try sync.configureHTTP2Pipeline(mode: .server, connectionConfiguration: .init(), streamConfiguration: .init(),
                                            streamDelegate: drain) { stream in
            // NIO holds the stream's frames until this future completes.
            let opened = stream.eventLoop.makePromise(of: Channel.self)
            mux.createStreamChannel(promise: opened) { appStream in
                appStream.eventLoop.makeCompletedFuture { try UpstreamHTTP2Stream.addDecoding(to: appStream.pipeline.syncOperations) }
            }
            return opened.futureResult.flatMapThrowing { appStream in
                let gate = AuthorizationGate(workload: workload, app: appStream, principal: principal, source: source, port: port,
                                             policies: policies)
                try stream.pipeline.syncOperations.addHandler(HTTP2FramePayloadToHTTP1ServerCodec())
                try stream.pipeline.syncOperations.addHandler(gate)
                try appStream.pipeline.syncOperations.addHandler(AppResponseRelay(gate: gate))
            }
        }
        try sync.addHandler(drain)
        // One goes, both go: the caller's connection and the app's.
        downstream.closeFuture.whenComplete { _ in app.close(promise: nil) }
        app.closeFuture.whenComplete { _ in downstream.close(promise: nil) }
        // A plaintext caller that shuts its side is gone (no half-open HTTP/2 connection holding
        // streams); a tunnel stream (it has a parent) ends with its END_STREAM instead.
        if downstream.parent == nil { try downstream.syncOptions?.setOption(.allowRemoteHalfClosure, value: false) }
        try downstream.syncOptions?.setOption(.autoRead, value: true)
        try app.syncOptions?.setOption(.autoRead, value: true)
    }
}
