import Glibc
import NIOCore
import WeftTelemetry

/// Glues an accepted downstream channel to a connected upstream one and starts the bytes
/// flowing. Both channels must be on the same event loop (a workload's NetnsEventLoop).
enum Splice {
    static func join(
        downstream: Channel,
        upstream: Channel,
        downstreamReceived: Counter?,
        upstreamReceived: Counter?,
        tcp: TCPTally? = nil,
        idleTimeout: TimeAmount? = nil
    ) throws {
        downstream.eventLoop.preconditionInEventLoop()
        let (down, up) = GlueHandler.matchedPair(downstreamReceived: downstreamReceived, upstreamReceived: upstreamReceived,
                                                 tally: tcp)
        if let idleTimeout {
            // Idle both ways for a whole period: close both (a FIN each, as Envoy's TCP proxy).
            let watch = IdleWatch.start(on: downstream, every: idleTimeout) {
                downstream.close(promise: nil)
                upstream.close(promise: nil)
            }
            down.idle = watch
            up.idle = watch
        }
        try downstream.pipeline.syncOperations.addHandler(down)
        try upstream.pipeline.syncOperations.addHandler(up)
        // Reads were off until both ends were glued (so no byte is read with nowhere to go);
        // from here on GlueHandler.read() gates them on the partner's writability.
        try downstream.syncOptions?.setOption(.autoRead, value: true)
        try upstream.syncOptions?.setOption(.autoRead, value: true)
    }
}
