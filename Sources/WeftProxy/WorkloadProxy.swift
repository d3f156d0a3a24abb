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
    private let context: WorkloadContext
    /// The TCP capture listeners (outbound, inbound, tunnel), then the DNS proxy's.
    private let listeners: [Channel]
    private let dnsListeners: [Channel]
    /// The NFQUEUE reader for new non-TCP flows (nil: not asked for, or it could not bind).
    private let egressQueue: EgressQueue?

    private init(context: WorkloadContext, tls: WorkloadTLS?, listeners: [Channel], dnsListeners: [Channel], egressQueue: EgressQueue?, attachedAt: Double) {
        self.spec = context.spec
        self.tls = tls
        self.counters = context.counters
        self.connections = context.connections
        self.loop = context.loop
        self.context = context
        self.listeners = listeners
        self.dnsListeners = dnsListeners
        self.egressQueue = egressQueue
        self.attachedAt = attachedAt
    }

    public static func start(
        spec: WorkloadSpec, nsfd: Int32, netnsCookie: UInt64, settings: CaptureSettings,
        directory: ServiceDirectory, dnsForwarder: DNSForwarder? = nil,
        connectTimeout: TimeAmount = .seconds(10), requestHeadersTimeout: TimeAmount? = .seconds(60), idleTimeout: TimeAmount? = .hours(1), maxConnections: Int? = nil, maxRequestBodyBytes: Int? = nil, retryBudget: RetryBudget.Settings = .init(), tls: WorkloadTLS? = nil,
        metrics: MeshMetrics? = nil, accessLog: AccessLog? = nil, tracer: Tracer? = nil, logger: Logger, now: Double
    ) async throws -> WorkloadProxy {
        let loop = try await NetnsEventLoop.start(netns: spec.netns, nsfd: nsfd, expectedCookie: netnsCookie)
        var logger = logger
        logger[metadataKey: "workload"] = "\(spec.name)"
        let eventLoop = loop.loop
        let (pool, h2Pool, budget, limiter, tunnels, accepted) = try await eventLoop.submit {
            (NIOLoopBound(UpstreamPool(), eventLoop: eventLoop), NIOLoopBound(H2UpstreamPool(), eventLoop: eventLoop),
             NIOLoopBound(RetryBudget(retryBudget), eventLoop: eventLoop), NIOLoopBound(ConnectionLimiter(), eventLoop: eventLoop),
             NIOLoopBound(TunnelPool(), eventLoop: eventLoop), NIOLoopBound(AcceptedConnections(limit: maxConnections), eventLoop: eventLoop))
        }.get()
        let counters = ProxyCounters()
        let context = WorkloadContext(spec: spec, loop: loop, counters: counters, connections: ConnectionLog(),
                                      ports: ProxyPorts(settings),
                                      mark: settings.proxyMark, connectTimeout: connectTimeout,
                                      requestHeadersTimeout: requestHeadersTimeout, idleTimeout: idleTimeout,
                                      maxRequestBodyBytes: maxRequestBodyBytes, logger: logger,
                                      directory: directory, upstreamPool: pool, h2Pool: h2Pool, retryBudget: budget, limiter: limiter,
                                      tls: tls, tunnels: tunnels, accepted: accepted, identity: tls?.identity?.description,
                                      telemetry: metrics == nil && accessLog == nil && tracer == nil ? nil
                                        : WorkloadTelemetry(metrics: metrics, accessLog: accessLog, tracer: tracer, spec: spec,
                                                            identity: tls?.identity?.description),
                                      egress: EgressAuditor(workload: spec.name, directory: directory, counters: counters, logger: logger))
        var plan: [(String, UInt16, Direction, required: Bool)] = [
            ("127.0.0.1", settings.outboundPort, .outbound, true),
            ("0.0.0.0", settings.inboundPort, .inbound, true),
            ("::1", settings.outboundPort, .outbound, false),
            ("::", settings.inboundPort, .inbound, false),
        ]
        if tls != nil {
            plan += [("0.0.0.0", settings.tunnelPort, .tunnel, true), ("::", settings.tunnelPort, .tunnel, false)]
        }
        var listeners: [Channel] = [], dnsListeners: [Channel] = []
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
                dnsListeners = try await bindDNS(port: dnsPort, responder: responder, context: context)
            }
        } catch {
            for l in listeners + dnsListeners { try? await l.close() }
            await loop.shutdown()
            throw error
        }
        var egressQueue: EgressQueue?
        if let queue = settings.egressQueue {
            do {
                egressQueue = try await EgressQueue.start(queue: queue, nsfd: nsfd, netns: spec.netns, auditor: context.egress, logger: logger)
            } catch {
                // The capture rules have no bypass: those flows are dropped, never let out unchecked.
                logger.error("\(error); new UDP/ICMP flows from this workload are dropped until it is re-attached")
            }
        }
        return WorkloadProxy(context: context, tls: tls, listeners: listeners, dnsListeners: dnsListeners, egressQueue: egressQueue, attachedAt: now)
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
                    guard context.accepted.value.admit(channel, outbound: direction == .outbound) else {
                        context.counters.connectionsOverLimit.add(1)
                        context.egress.noteOverLimit(direction: direction.rawValue, limit: context.accepted.value.limit ?? 0)
                        channel.closeWithReset()
                        return
                    }
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

    /// Graceful drain: stop accepting (the capture ports refuse from now on, so callers fail
    /// fast instead of hanging), tell every open connection to finish (ProxyDrainEvent),
    /// close idle pooled upstreams, and wait until the accepted connections are gone or
    /// `timeout` passes. Returns how many were still open then. DNS keeps answering until
    /// stop(): requests in flight may still resolve names for their retries.
    public func drain(timeout: Duration) async -> Int {
        for l in listeners { try? await l.close() }
        let context = self.context
        let loop = context.loop.loop
        // Whichever comes first: every connection finished, or the deadline.
        let done: EventLoopFuture<Void> = loop.flatSubmit {
            context.upstreamPool.value.closeAll()
            context.h2Pool.value.drain()
            context.tunnels.value.drain()
            let finished = context.accepted.value.drain(on: loop)
            let promise = loop.makePromise(of: Void.self)
            let deadline = loop.scheduleTask(in: TimeAmount(timeout)) { promise.succeed() }
            finished.whenComplete { _ in
                deadline.cancel()  // a deadline that already fired is not cancelled, and has succeeded it
                promise.succeed()
            }
            return promise.futureResult
        }
        try? await done.get()
        return (try? await loop.submit { context.accepted.value.count }.get()) ?? 0
    }

    /// Stops accepting and closes the listeners; connections still open are closed with the
    /// loop (drain first to let them finish).
    public func stop() async {
        for l in listeners + dnsListeners { try? await l.close() }
        await egressQueue?.stop()
        await loop.shutdown()
    }

    public var status: WorkloadStatus {
        WorkloadStatus(spec: spec, podIPs: [spec.podIP, spec.podIPv6].compactMap { $0 }, counters: counters.snapshot, attachedAt: attachedAt,
                       recentConnections: connections.snapshot)
    }
}
