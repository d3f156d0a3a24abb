import Glibc
import NIOCore
import WeftCore
import WeftTelemetry

/// The outbound data path, top to bottom: an app in the workload netns called some address;
/// the OUTPUT REDIRECT rule delivered the connection to 127.0.0.1:15001 (or [::1]:15001).
///
/// 1. recover the original destination (SO_ORIGINAL_DST)
/// 2. decide: refuse loops and direct connections to the proxy port
/// 2b. egress: under REGISTRY_ONLY, a destination outside the mesh registry (and not an
///    allowedDestination) is refused; outside-registry calls are counted either way
/// 3. protocol: a port declared `/http`, `/http2` or `/grpc` goes to the L7 path
///    (HTTPOutboundProxyHandler: one endpoint per request, HTTP/1.1 or HTTP/2 as the client
///    speaks); `/tcp` and `/tls` are forwarded as bytes; an undeclared port is detected
///    (ProtocolDetector) while its upstream is already being dialled
/// 4. for bytes: a service virtual IP becomes one of the service's endpoints (round robin),
///    any other address is used as it is; connect from inside the netns with the proxy's
///    SO_MARK, so the capture rules let this connection through
/// 5. splice the two connections, counting bytes both ways
enum Outbound {
    static func accept(_ downstream: Channel, context: WorkloadContext, listener: OriginalDestination) -> EventLoopFuture<Void> {
        context.counters.connectionsOutbound.add(1)
        return OriginalDestination.read(from: downstream).flatMap { original in
            switch CaptureDecisions.outbound(original: original, listener: listener, ports: context.ports) {
            case .refuse(let reason):
                return context.refuse(downstream, direction: .outbound, reason: reason)
            case .forward(let original):
                if let refused = context.checkEgress(EgressFlow(proto: .tcp, destination: original.ip, port: original.port)) {
                    return context.refuse(downstream, direction: .outbound, reason: refused)
                }
                let declared = context.directory.portProtocol(original)
                switch declared {
                case .http?, .http2?, .grpc?:
                    ProtocolDetector.start(downstream, workload: context, original: original, mode: .declaredHTTP)
                    return downstream.eventLoop.makeSucceededVoidFuture()
                case .tcp?, .tls?, nil:
                    break
                }
                let target: OriginalDestination
                var service: ServiceKey?, endpointWorkload: String?
                switch context.directory.resolve(original) {
                case .passthrough:
                    target = original
                case .endpoint(let endpoint, let key, let name):
                    target = endpoint
                    service = key
                    endpointWorkload = name
                case .noEndpoints(let service):
                    return context.refuse(downstream, direction: .outbound, reason: "service \(service) (\(original)) has no endpoints")
                case .unknownPort(let service, let port):
                    return context.refuse(downstream, direction: .outbound, reason: "service \(service) has no port \(port)")
                }
                guard let declared else {
                    ProtocolDetector.start(downstream, workload: context, original: original, mode: .detect(target: target))
                    return downstream.eventLoop.makeSucceededVoidFuture()
                }
                ProtocolDetector.record(declared == .tls ? .tls : .opaque, by: "declared", downstream: downstream, workload: context, original: original)
                return context.forward(downstream, to: target, direction: .outbound,
                                       downstreamBytes: context.counters.bytesOutboundSent,
                                       upstreamBytes: context.counters.bytesOutboundReceived,
                                       tcp: context.outboundLabels(target: target, service: service, workload: endpointWorkload, requestProtocol: "tcp"))
            }
        }.flatMapError { error in
            context.refuse(downstream, direction: .outbound, reason: "no original destination: \(WorkloadContext.describe(error))")
        }
    }
}
