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
        tcp: TCPTally? = nil
    ) throws {
        downstream.eventLoop.preconditionInEventLoop()
        let (down, up) = GlueHandler.matchedPair(downstreamReceived: downstreamReceived, upstreamReceived: upstreamReceived,
                                                 tally: tcp)
        try downstream.pipeline.syncOperations.addHandler(down)
        try upstream.pipeline.syncOperations.addHandler(up)
        // Reads were off until both ends were glued (so no byte is read with nowhere to go);
        // from here on GlueHandler.read() gates them on the partner's writability.
        try downstream.syncOptions?.setOption(.autoRead, value: true)
        try upstream.syncOptions?.setOption(.autoRead, value: true)
    }
}
