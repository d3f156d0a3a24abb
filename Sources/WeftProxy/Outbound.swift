import Glibc
import NIOCore
import WeftCore

/// The outbound data path, top to bottom: an app in the workload netns called some address;
/// the OUTPUT REDIRECT rule delivered the connection to 127.0.0.1:15001 (or [::1]:15001).
///
/// 1. recover the original destination (SO_ORIGINAL_DST)
/// 2. decide: refuse loops and direct connections to the proxy port
/// 3. connect to the destination from inside the netns with the proxy's SO_MARK, so the
///    capture rules let this connection through
/// 4. splice the two connections, counting bytes both ways
enum Outbound {
    static func accept(_ downstream: Channel, context: WorkloadContext, listener: OriginalDestination) -> EventLoopFuture<Void> {
        context.counters.connectionsOutbound.add(1)
        return OriginalDestination.read(from: downstream).flatMap { original in
            switch CaptureDecisions.outbound(original: original, listener: listener, ports: context.ports) {
            case .refuse(let reason):
                return context.refuse(downstream, direction: .outbound, reason: reason)
            case .forward(let target):
                return context.forward(downstream, to: target, direction: .outbound,
                                       downstreamBytes: context.counters.bytesOutboundSent,
                                       upstreamBytes: context.counters.bytesOutboundReceived)
            }
        }.flatMapError { error in
            context.refuse(downstream, direction: .outbound, reason: "no original destination: \(WorkloadContext.describe(error))")
        }
    }
}
