import Logging
import Glibc
import NIOCore
import NIOPosix
import WeftCore
import WeftTelemetry

/// What every connection handler of one workload needs. Immutable; shared across its loop.
public struct WorkloadContext: Sendable {
    public let spec: WorkloadSpec
    public let loop: NetnsEventLoop
    public let counters: ProxyCounters
    public let connections: ConnectionLog
    public let ports: ProxyPorts
    public let mark: UInt32
    public let connectTimeout: TimeAmount
    /// HTTP/1.1 from the app: how long a connection may take to deliver a whole request head
    /// once it is idle (accepted, or its last exchange over); nil: no limit. Slowloris clients
    /// get 408, silent keep-alive connections are closed.
    public let requestHeadersTimeout: TimeAmount?
    /// A proxied connection (or HTTP exchange) with no byte read on either side for this long
    /// is closed (checked once per period: closed after one to two periods); nil: never.
    public let idleTimeout: TimeAmount?
    /// Requests with a larger body get 413 (nil: no limit; bodies are streamed either way).
    public let maxRequestBodyBytes: Int?
    public let logger: Logger
    public let directory: ServiceDirectory
    /// Idle HTTP/1.1 upstream connections; only touched on the workload's loop.
    let upstreamPool: NIOLoopBound<UpstreamPool>
    /// Multiplexed HTTP/2 upstream connections (h2c, gRPC); only touched on the loop.
    let h2Pool: NIOLoopBound<H2UpstreamPool>
    /// Retry budgets per destination service; only touched on the loop.
    let retryBudget: NIOLoopBound<RetryBudget>
    /// connectionPool limits per destination service; only touched on the loop.
    let limiter: NIOLoopBound<ConnectionLimiter>
    /// The workload's certificate (nil: no identity, so no mesh tunnel either way).
    let tls: WorkloadTLS?
    /// Pooled mTLS tunnel connections to peer workloads; only touched on the loop.
    let tunnels: NIOLoopBound<TunnelPool>
    /// Every connection the capture listeners accepted and that is still open (for drain).
    let accepted: NIOLoopBound<AcceptedConnections>
    /// This workload's SPIFFE ID (fixed for its life; renewals keep it), when it has one.
    let identity: String?
    /// Where Istio's standard metrics go, and how this workload is labelled as their source.
    let telemetry: WorkloadTelemetry?
    /// Egress decisions, counts and log lines for flows leaving the mesh.
    let egress: EgressAuditor

    /// nil: the flow may go; else why it is refused (counted and logged).
    func checkEgress(_ flow: EgressFlow) -> String? {
        let verdict = egress.check(flow)
        return verdict.allowed ? nil : "egress denied: \(verdict.reason)"
    }
}

/// The agent's metrics and access log (either may be off), and one workload's labels in them
/// (a class: read on every request without copying its fields).
public final class WorkloadTelemetry: Sendable {
    public let metrics: MeshMetrics?
    public let accessLog: AccessLog?
    public let tracer: Tracer?
    public let source: PeerLabels
    /// service.name of this workload's spans: `app.namespace`.
    public let spanService: String

    public init(metrics: MeshMetrics?, accessLog: AccessLog?, tracer: Tracer? = nil, spec: WorkloadSpec, identity: String?) {
        self.metrics = metrics
        self.accessLog = accessLog
        self.tracer = tracer
        spanService = "\(spec.labels["app"] ?? spec.service.rawValue).\(spec.namespace.rawValue)"
        source = PeerLabels(workload: spec.name, namespace: spec.namespace.rawValue, principal: identity,
                            app: spec.labels["app"] ?? spec.service.rawValue, version: spec.labels["version"])
    }
}

enum Direction: String {
    case inbound, outbound, tunnel
}

extension WorkloadContext {
    /// The common tail of both directions: connect (marked, inside the netns), splice, count.
    /// On a failed connect the downstream is reset, so the app sees a refused/reset
    /// connection rather than an accepted one that then goes silent.
    func forward(_ downstream: Channel, to target: OriginalDestination, direction: Direction,
                 downstreamBytes: Counter, upstreamBytes: Counter,
                 fallback: OriginalDestination? = nil, tcp: MeshLabels? = nil) -> EventLoopFuture<Void> {
        let client = downstream.remoteAddress.map { "\($0)" } ?? "?"
        return dial(target, proto: "tcp") { _ in }.flatMapThrowing { upstream in
            try Splice.join(downstream: downstream, upstream: upstream,
                            downstreamReceived: downstreamBytes, upstreamReceived: upstreamBytes,
                            tcp: tcp.flatMap { TCPTally($0, telemetry: telemetry, downstream: downstream, upstream: target) },
                            idleTimeout: idleTimeout)
            logger.debug("\(direction.rawValue) connection", metadata: ["client": "\(client)", "destination": "\(target)"])
        }.flatMapError { error in
            if let fallback, Self.isRefused(error) {
                return self.forward(downstream, to: fallback, direction: direction,
                                    downstreamBytes: downstreamBytes, upstreamBytes: upstreamBytes, tcp: tcp)
            }
            return self.refuse(downstream, direction: direction, reason: "upstream \(target): \(Self.describe(error))")
        }
    }

    func refuse(_ channel: Channel, direction: Direction, reason: String) -> EventLoopFuture<Void> {
        counters.connectionErrors.add(1)
        logger.notice("\(direction.rawValue) connection refused: \(reason)",
                      metadata: ["workload": "\(spec.name)", "client": "\(channel.remoteAddress.map { "\($0)" } ?? "?")"])
        // RST rather than FIN: the app learns at once that nothing is there.
        channel.closeWithReset()
        return channel.eventLoop.makeSucceededVoidFuture()
    }

    /// ECONNREFUSED, directly or inside NIO's per-address connection errors.
    static func isRefused(_ error: Error) -> Bool {
        if let io = error as? IOError { return io.errnoCode == ECONNREFUSED }
        if let e = error as? NIOConnectionError {
            return e.connectionErrors.contains { ($0.error as? IOError)?.errnoCode == ECONNREFUSED }
        }
        return false
    }

    static func describe(_ error: Error) -> String {
        if let io = error as? IOError { return io.description }
        if case ChannelError.connectTimeout(let t) = error { return "connect timed out after \(t.nanoseconds / 1_000_000) ms" }
        if let e = error as? NIOConnectionError, let first = e.connectionErrors.first { return "\(first.error)" }
        return "\(error)"
    }
}

// MARK: - metric labels

extension WorkloadContext {
    /// A connection or request this workload makes to `target` (reporter=source). nil
    /// without telemetry.
    func outboundLabels(target: OriginalDestination, service: ServiceKey?, host: String? = nil, workload name: String?,
                        requestProtocol: String) -> MeshLabels? {
        guard let telemetry else { return nil }
        var labels = MeshLabels(reporter: .source, source: telemetry.source, destination: .unknown, service: .unknown,
                                requestProtocol: requestProtocol, securityPolicy: "none")
        let peer = directory.peer(at: target.ip)
        if let service {
            labels.service = ServiceLabels(host: host ?? service.fqdn, name: service.name.rawValue, namespace: service.namespace.rawValue)
        } else {
            labels.service = ServiceLabels(host: "\(target.ip)", name: "PassthroughCluster", namespace: "unknown")
        }
        if let peer {
            labels.destination = PeerLabels(workload: name ?? peer.workload, namespace: peer.namespace, principal: peer.identity.description,
                                            app: peer.labels["app"] ?? peer.service, version: peer.labels["version"])
            if tls != nil, directory.tunnelPeer(target) != nil { labels.securityPolicy = "mutual_tls" }
        } else if let name, let service {
            labels.destination = PeerLabels(workload: name, namespace: service.namespace.rawValue, principal: nil,
                                            app: service.name.rawValue, version: nil)
        }
        return labels
    }

    /// A connection to this workload from `client` (reporter=destination); `principal`: the
    /// caller's verified identity when it came through the tunnel.
    func inboundLabels(client: IPAddress?, principal: String?, requestProtocol: String) -> MeshLabels? {
        guard let telemetry else { return nil }
        let service = ServiceLabels(host: ServiceKey(name: spec.service, namespace: spec.namespace).fqdn, name: spec.service.rawValue,
                                    namespace: spec.namespace.rawValue)
        var labels = MeshLabels(reporter: .destination, source: .unknown, destination: telemetry.source, service: service,
                                requestProtocol: requestProtocol, securityPolicy: principal == nil ? "none" : "mutual_tls")
        if let client, let peer = directory.peer(at: client), principal == nil || principal == peer.identity.description {
            labels.source = PeerLabels(workload: peer.workload, namespace: peer.namespace, principal: principal,
                                       app: peer.labels["app"] ?? peer.service, version: peer.labels["version"])
        } else if let principal {
            var source = PeerLabels.unknown
            source.principal = principal
            labels.source = source
        }
        return labels
    }
}
