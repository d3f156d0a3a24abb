import Glibc
import NIOCore
import WeftConfig
import WeftCore
import WeftTelemetry

/// The inbound data path, top to bottom: a peer connected to this workload's address; the
/// PREROUTING REDIRECT rule delivered it to the inbound listener on 15006.
///
/// 1. recover the original destination (the pod address and the port the caller dialled)
/// 2. PeerAuthentication: STRICT refuses plaintext (meshed callers come through the
///    tunnel on 15008 instead); PERMISSIVE and DISABLE accept it
/// 3. decide: the app is reached on loopback in its own netns, on that port (an IPv6 caller
///    falls back to 127.0.0.1 when the app listens on IPv4 only); proxy ports are never
///    forwarded
/// 4. connect to the app from inside the netns (marked; loopback is never captured anyway)
/// 5. splice, counting bytes both ways
enum Inbound {
    static func accept(_ downstream: Channel, context: WorkloadContext, listener: OriginalDestination) -> EventLoopFuture<Void> {
        context.counters.connectionsInbound.add(1)
        return OriginalDestination.read(from: downstream).flatMap { original in
            switch CaptureDecisions.inbound(original: original, listener: listener, ports: context.ports) {
            case .refuse(let reason):
                return context.refuse(downstream, direction: .inbound, reason: reason)
            case .forward(let target):
                let mode = context.directory.mtlsMode(namespace: context.spec.namespace.rawValue, labels: context.spec.labels,
                                                      port: original.port)
                if mode == .STRICT {
                    context.counters.plaintextRefused.add(1)
                    return context.refuse(downstream, direction: .inbound,
                                          reason: "plaintext to port \(original.port) refused: PeerAuthentication mode STRICT (only mTLS through the mesh tunnel)")
                }
                context.counters.plaintextInbound.add(1)
                // AuthorizationPolicy for plaintext callers (no principal): HTTP ports are
                // checked per request, other ports once per connection.
                let policies = context.directory.authorizationPolicies(namespace: context.spec.namespace.rawValue, labels: context.spec.labels)
                if !policies.isEmpty || context.telemetry?.tracer != nil {
                    let client = downstream.remoteAddress?.weftIP
                    let declared = context.spec.ports.first { $0.targetPort == original.port }?.proto
                    if declared == .http2 || declared == .grpc {
                        return gated(downstream, to: target, context: context, client: client, port: original.port, policies: policies,
                                     http2: true)
                    }
                    if declared == .http {
                        // HTTP/1.1 or h2c: the caller's first bytes tell.
                        let port = original.port
                        let sniffer = PrefaceSniffer { http2 in
                            gated(downstream, to: target, context: context, client: client, port: port, policies: policies, http2: http2)
                        }
                        return downstream.eventLoop.makeCompletedFuture { try downstream.pipeline.syncOperations.addHandler(sniffer) }
                    }
                    let check = AuthorizationRequest(principal: nil, sourceIP: client, port: original.port)
                    let decision = InboundAuthorization.decideConnection(check, policies: policies)
                    if case .deny = decision {
                        InboundAuthorization.logDenial(context, decision, request: check, what: "plaintext connection")
                        downstream.closeWithReset()
                        return downstream.eventLoop.makeSucceededVoidFuture()
                    }
                }
                return context.forward(downstream, to: target, direction: .inbound,
                                       downstreamBytes: context.counters.bytesInboundReceived,
                                       upstreamBytes: context.counters.bytesInboundSent,
                                       fallback: CaptureDecisions.inboundFallback(after: target),
                                       tcp: context.inboundLabels(client: downstream.remoteAddress?.weftIP, principal: nil, requestProtocol: "tcp"))
            }
        }.flatMapError { error in
            context.refuse(downstream, direction: .inbound, reason: "no original destination: \(WorkloadContext.describe(error))")
        }
    }

    /// Plaintext HTTP under AuthorizationPolicy: dial the app, then the per-request gate.
    private static func gated(_ downstream: Channel, to target: OriginalDestination, context: WorkloadContext, client: IPAddress?,
                              port: UInt16, policies: [AuthorizationPolicy], http2: Bool) -> EventLoopFuture<Void> {
        context.dial(target, proto: http2 ? "h2c" : "http/1.1") { _ in }.flatMapThrowing { app in
            if http2 {
                try InboundAuthorization.startHTTP2Gate(downstream: downstream, app: app, workload: context, principal: nil, source: client,
                                                        port: port, policies: policies)
            } else {
                try InboundAuthorization.startGate(downstream: downstream, app: app, workload: context, principal: nil, source: client,
                                                   port: port, policies: policies)
            }
        }.flatMapError { error in
            context.refuse(downstream, direction: .inbound, reason: "upstream \(target): \(WorkloadContext.describe(error))")
        }
    }
}
