import Glibc
import CWeftLinux
import Logging
import NIOCore
import NIOPosix
import WeftCore
import WeftTelemetry

/// The proxy of one meshed netns: its loop thread inside the netns, and the capture
/// listeners there — outbound on loopback (OUTPUT REDIRECT lands on 127.0.0.1 / ::1) and
/// inbound on the wildcard address (PREROUTING REDIRECT lands on the interface address).
public final class WorkloadProxy: Sendable {
    public let spec: WorkloadSpec
    public let tls: WorkloadTLS?
    public let counters: ProxyCounters
    public let connections: ConnectionLog
    public let attachedAt: Double
    private let loop: NetnsEventLoop
    private let listeners: [Channel]

    private init(spec: WorkloadSpec, tls: WorkloadTLS?, counters: ProxyCounters, connections: ConnectionLog, loop: NetnsEventLoop,
                 listeners: [Channel], attachedAt: Double) {
        self.spec = spec
        self.tls = tls
        self.counters = counters
        self.connections = connections
        self.loop = loop
        self.listeners = listeners
        self.attachedAt = attachedAt
    }

    public static func start(
        spec: WorkloadSpec, nsfd: Int32, netnsCookie: UInt64, settings: CaptureSettings,
        directory: ServiceDirectory, dnsForwarder: DNSForwarder? = nil,
        connectTimeout: TimeAmount = .seconds(10), retryBudget: RetryBudget.Settings = .init(), tls: WorkloadTLS? = nil,
        metrics: MeshMetrics? = nil, accessLog: AccessLog? = nil, tracer: Tracer? = nil, logger: Logger, now: Double
    ) async throws -> WorkloadProxy {
        let loop = try await NetnsEventLoop.start(netns: spec.netns, nsfd: nsfd, expectedCookie: netnsCookie)
        var logger = logger
        logger[metadataKey: "workload"] = "\(spec.name)"
        let eventLoop = loop.loop
        let (pool, h2Pool, budget, limiter, tunnels) = try await eventLoop.submit {
            (NIOLoopBound(UpstreamPool(), eventLoop: eventLoop), NIOLoopBound(H2UpstreamPool(), eventLoop: eventLoop),
             NIOLoopBound(RetryBudget(retryBudget), eventLoop: eventLoop), NIOLoopBound(ConnectionLimiter(), eventLoop: eventLoop),
             NIOLoopBound(TunnelPool(), eventLoop: eventLoop))
        }.get()
        let context = WorkloadContext(spec: spec, loop: loop, counters: ProxyCounters(), connections: ConnectionLog(),
                                      ports: ProxyPorts(settings),
                                      mark: settings.proxyMark, connectTimeout: connectTimeout, logger: logger,
                                      directory: directory, upstreamPool: pool, h2Pool: h2Pool, retryBudget: budget, limiter: limiter,
                                      tls: tls, tunnels: tunnels, identity: tls?.identity?.description,
                                      telemetry: metrics == nil && accessLog == nil && tracer == nil ? nil
                                        : WorkloadTelemetry(metrics: metrics, accessLog: accessLog, tracer: tracer, spec: spec,
                                                            identity: tls?.identity?.description))
        var plan: [(String, UInt16, Direction, required: Bool)] = [
            ("127.0.0.1", settings.outboundPort, .outbound, true),
            ("0.0.0.0", settings.inboundPort, .inbound, true),
            ("::1", settings.outboundPort, .outbound, false),
            ("::", settings.inboundPort, .inbound, false),
        ]
        if tls != nil {
            plan += [("0.0.0.0", settings.tunnelPort, .tunnel, true), ("::", settings.tunnelPort, .tunnel, false)]
        }
        var listeners: [Channel] = []
        do {
            for (host, port, direction, required) in plan {
                do {
                    listeners.append(try await bind(host: host, port: port, direction: direction, context: context))
                } catch let error as IOError where !required && (error.errnoCode == EADDRNOTAVAIL || error.errnoCode == EAFNOSUPPORT) {
                    logger.notice("IPv6 unavailable in netns \(spec.netns); \(direction.rawValue) IPv6 not proxied")
                }
            }
            if let dnsPort = settings.dnsPort {
                let responder = DNSResponder(namespace: spec.namespace, directory: directory, forwarder: dnsForwarder,
                                             counters: context.counters)
                listeners += try await bindDNS(port: dnsPort, responder: responder, context: context)
            }
        } catch {
            for l in listeners { try? await l.close() }
            await loop.shutdown()
            throw error
        }
        return WorkloadProxy(spec: spec, tls: tls, counters: context.counters, connections: context.connections, loop: loop,
                             listeners: listeners, attachedAt: now)
    }

    private static func bind(host: String, port: UInt16, direction: Direction, context: WorkloadContext) async throws -> Channel {
        let address = try SocketAddress(ipAddress: host, port: Int(port))
        guard let listenerIP = address.weftIP else { throw WeftError(.system, "bad listener address \(host)") }
        let listener = OriginalDestination(ip: listenerIP, port: port)
        do {
            return try await context.loop.listen(on: address) { channel in
                // Start after the channel is registered (the initializer's future resolves
                // first); reads stay off until the upstream is connected and glued.
                channel.eventLoop.execute {
                    let local = channel.localAddress?.weftIP.map { OriginalDestination(ip: $0, port: port) } ?? listener
                    switch direction {
                    case .outbound: _ = Outbound.accept(channel, context: context, listener: local)
                    case .inbound: _ = Inbound.accept(channel, context: context, listener: local)
                    case .tunnel: TunnelServer.accept(channel, context: context, listener: local)
                    }
                }
                return channel.eventLoop.makeSucceededVoidFuture()
            }.get()
        } catch let error as IOError where error.errnoCode == EADDRINUSE {
            throw WeftError(.addressInUse, "port \(port) (\(direction.rawValue) capture) is already in use inside netns \(context.spec.netns) on \(host)",
                            hint: "another proxy or the app itself holds it; the capture ports must be free in a meshed netns")
        }
    }

    /// UDP and TCP on 127.0.0.1:port inside the netns (see DNSServer.swift for why loopback).
    private static func bindDNS(port: UInt16, responder: DNSResponder, context: WorkloadContext) async throws -> [Channel] {
        let address = try SocketAddress(ipAddress: "127.0.0.1", port: Int(port))
        do {
            let udp = try await context.loop.bindUDP(on: address) { ch in
                ch.eventLoop.makeCompletedFuture { try ch.pipeline.syncOperations.addHandler(DNSUDPHandler(responder: responder)) }
            }.get()
            let tcp = try await context.loop.listen(on: address, autoRead: true) { ch in
                ch.eventLoop.makeCompletedFuture {
                    try ch.pipeline.syncOperations.addHandler(ByteToMessageHandler(DNSLengthFrameDecoder()))
                    try ch.pipeline.syncOperations.addHandler(DNSTCPHandler(responder: responder))
                }
            }.get()
            return [udp, tcp]
        } catch let error as IOError where error.errnoCode == EADDRINUSE {
            throw WeftError(.addressInUse, "port \(port) (DNS proxy) is already in use inside netns \(context.spec.netns) on 127.0.0.1",
                            hint: "another DNS server runs in the namespace; stop it or start the agent with a different DNS port")
        }
    }

    /// Stops accepting and closes the listeners; established connections are closed with
    /// the loop (graceful drain arrives with the agent's drain timeout).
    public func stop() async {
        for l in listeners { try? await l.close() }
        await loop.shutdown()
    }

    public var status: WorkloadStatus {
        WorkloadStatus(spec: spec, podIPs: [spec.podIP, spec.podIPv6].compactMap { $0 }, counters: counters.snapshot, attachedAt: attachedAt,
                       recentConnections: connections.snapshot)
    }
}
