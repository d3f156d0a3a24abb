import Glibc
import NIOCore
import WeftCore

/// The inbound data path, top to bottom: a peer connected to this workload's address; the
/// PREROUTING REDIRECT rule delivered it to the inbound listener on 15006.
///
/// 1. recover the original destination (the pod address and the port the caller dialled)
/// 2. decide: the app is reached on loopback in its own netns, on that port (an IPv6 caller
///    falls back to 127.0.0.1 when the app listens on IPv4 only); proxy ports are never
///    forwarded
/// 3. connect to the app from inside the netns (marked; loopback is never captured anyway)
/// 4. splice, counting bytes both ways
enum Inbound {
    static func accept(_ downstream: Channel, context: WorkloadContext, listener: OriginalDestination) -> EventLoopFuture<Void> {
        context.counters.connectionsInbound.add(1)
        return OriginalDestination.read(from: downstream).flatMap { original in
            switch CaptureDecisions.inbound(original: original, listener: listener, ports: context.ports) {
            case .refuse(let reason):
                return context.refuse(downstream, direction: .inbound, reason: reason)
            case .forward(let target):
                return context.forward(downstream, to: target, direction: .inbound,
                                       downstreamBytes: context.counters.bytesInboundReceived,
                                       upstreamBytes: context.counters.bytesInboundSent,
                                       fallback: CaptureDecisions.inboundFallback(after: target))
            }
        }.flatMapError { error in
            context.refuse(downstream, direction: .inbound, reason: "no original destination: \(WorkloadContext.describe(error))")
        }
    }
}
