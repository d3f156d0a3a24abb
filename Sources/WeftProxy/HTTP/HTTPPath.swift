import NIOCore
import NIOHTTP1
import WeftCore

/// Turns an accepted app connection into an HTTP/1.1 L7 one: NIO's server codec with
/// pipelining assistance (responses leave in request order) and its protocol error handler
/// (malformed HTTP gets a 400 and the connection closes), then the proxy handler.
enum HTTPPath {
    static func start(_ downstream: Channel, context: WorkloadContext, original: OriginalDestination) -> EventLoopFuture<Void> {
        do {
            let sync = downstream.pipeline.syncOperations
            try sync.configureHTTPServerPipeline(withPipeliningAssistance: true, withErrorHandling: true)
            try sync.addHandler(HTTPOutboundProxyHandler(workload: context, original: original, pool: context.upstreamPool.value))
            try downstream.syncOptions?.setOption(.autoRead, value: true)
            return downstream.eventLoop.makeSucceededVoidFuture()
        } catch {
            return context.refuse(downstream, direction: .outbound, reason: "cannot start the HTTP path: \(error)")
        }
    }
}
