import Glibc
import Foundation
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import WeftConfig
import WeftControl
import WeftCore
import WeftIdentity
import WeftNetns
import WeftProxy
import WeftTelemetry

/// `weft agent`: prepares the node network (bridge + gateway), serves the local API, hosts
/// one WorkloadProxy per attached netns, tells systemd it is ready, and on SIGTERM/SIGINT
/// stops its proxies and removes its socket. Capture rules stay in place on purpose: while
/// the agent is away, meshed traffic fails closed instead of bypassing the mesh.
public struct AgentService: Service {
    let config: AgentConfiguration
    let logger: Logger

    public init(config: AgentConfiguration, logger: Logger) {
        self.config = config
        self.logger = logger
    }

    public func run() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        var forwarder: DNSForwarder?
        if config.capture.dnsPort != nil, let upstream = config.dnsUpstream {
            forwarder = try await DNSForwarder.start(upstream: try SocketAddress(ipAddress: upstream.ip.description, port: Int(upstream.port)),
                                                     group: group)
        }
        // Joining (or loading the node's credentials) comes first: a node that cannot join
        // changes nothing on the host.
        var link: ControlLink?
        if let settings = config.control {
            let l = ControlLink(settings: settings, stateDirectory: config.stateDirectory, podCIDR: config.podCIDR, logger: logger)
            do { try await l.bootstrap() } catch {
                try? await group.shutdownGracefully()
                throw error
            }
            link = l
        }
        var identities: WorkloadIdentities?
        if config.mtls, let link {
            identities = WorkloadIdentities(control: link, trustDomain: try await link.meshTrustDomain(),
                                            directory: config.stateDirectory + "/certs")
            logger.info("workload certificates come from the control plane", metadata: ["control": "\(config.control?.address ?? "?")"])
        } else if config.mtls {
            let ca = try WorkloadIdentities.loadCA(config)
            identities = WorkloadIdentities(ca: ca, lifetime: config.certificateLifetime)
            logger.info("certificate authority ready", metadata: ["trustDomain": "\(ca.trustDomain)", "roots": "\(ca.rootSerials.joined(separator: ","))",
                                                                  "lifetime": "\(config.certificateLifetime)"])
        } else {
            logger.warning("mTLS is off (--no-mtls): meshed workloads have no identity and talk in plaintext")
        }
        var accessLog: AccessLog?
        if let destination = config.accessLog {
            do { accessLog = try AccessLog(destination: destination, format: config.accessLogFormat) } catch {
                try? await group.shutdownGracefully()
                throw WeftError(.invalidArgument, "--access-log: \(error)")
            }
        }
        let tracer = config.tracingCollector.map { Tracer(collector: $0, sampling: config.traceSamplingPercent / 100, tls: config.tracingCollectorTLS) }
        let registry = try WorkloadRegistry(config: config, logger: logger, dnsForwarder: forwarder, identities: identities, accessLog: accessLog,
                                            tracer: tracer)
        let exporting = tracer.map { t in Task { await t.runExporter(logger: logger) } }
        try PodNetworking.ensureBridge(
            config.bridge, gateway: await registry.gateway, prefixLength: config.podCIDR.prefixLength,
            gatewayV6: config.podCIDRv6.flatMap(PodAddressPool.ipv6Gateway(in:)), prefixLengthV6: config.podCIDRv6?.prefixLength ?? 64)
        if let link {
            registry.directory.globalLimits.connect(link)
            await registry.restoreConfig(version: await link.restoredVersion)
            await registry.applyRemote(await link.savedRegistry)
        } else {
            await registry.restoreConfig()
        }
        var watcher: Task<Void, Never>?
        if let dir = config.configDirectory {
            let w = ConfigDirectoryWatcher(path: dir, registry: registry, logger: logger)
            await w.syncOnce()  // before the API is up: the directory's config is in force from the start
            watcher = Task { await w.run() }
        }
        let restored = await registry.restore()
        if restored > 0 { logger.info("re-attached \(restored) workload(s) from \(config.stateDirectory)") }
        let checker = Task { await HealthChecker(directory: registry.directory, group: group, logger: logger).run() }
        // Renewal at half life; checked every second (certificates may live only minutes).
        let renewer = Task {
            while !Task.isCancelled {
                try? await Task.sleep(for: .seconds(1))
                await registry.renewDueCertificates()
            }
        }
        let following = link.map { link in Task { await link.run(registry: registry) } }
        let api = LocalAPI(registry: registry, capture: config.capture, logger: logger, control: link)
        let admin = AdminAPI(registry: registry, metrics: AgentMetrics(metrics: registry.metrics), control: link)
        var endpoints: [Channel] = []
        do {
            if let address = config.metricsAddress {
                endpoints.append(try await HTTPEndpoint.bind(address, flag: "--metrics-address", group: group) { method, uri, _ in
                    let path = uri.split(separator: "?").first.map(String.init) ?? uri
                    guard method == .GET, path == "/metrics" || path == "/stats/prometheus" else {
                        return HTTPReply(.notFound, "only GET /metrics here\n")
                    }
                    return await admin.prometheus()
                })
            }
            if let address = config.adminAddress {
                endpoints.append(try await HTTPEndpoint.bind(address, flag: "--admin-address", group: group) { method, uri, _ in
                    await admin.respond(method: method, uri: uri)
                })
            }
        } catch {
            for e in endpoints { try? await e.close() }
            watcher?.cancel()
            checker.cancel()
            renewer.cancel()
            following?.cancel()
            await registry.stopAll()
            await forwarder?.close()
            try? await group.shutdownGracefully()
            throw error
        }
        let server = try await api.bind(path: config.socketPath, group: group)
        logger.info("weft agent ready", metadata: ["socket": "\(config.socketPath)", "bridge": "\(config.bridge)",
                                                   "dns": "\(config.capture.dnsPort.map { "127.0.0.1:\($0) → \(config.dnsUpstream.map { "\($0)" } ?? "no upstream")" } ?? "off")",
                                                   "podCIDR": "\(config.podCIDR)", "version": "\(WeftVersion.current)",
                                                   "metrics": "\(config.metricsAddress ?? "off")", "admin": "\(config.adminAddress ?? "off")",
                                                   "accessLog": "\(config.accessLog.map { "\($0) (\(config.accessLogFormat.rawValue))" } ?? "off")",
                                                   "tracing": "\(config.tracingCollector.map { "\($0)\(config.tracingCollectorTLS == nil ? "" : " (TLS)") at \(config.traceSamplingPercent)%" } ?? "off")"])
        SystemdNotify.send("READY=1\nSTATUS=serving \(config.socketPath)")
        let reloads = HangupReloads(logger: logger) { [config, logger, accessLog] in
            SystemdNotify.send("RELOADING=1")
            var done: [String] = []
            if let dir = config.configDirectory {
                let w = ConfigDirectoryWatcher(path: dir, registry: registry, logger: logger)
                done.append(await w.syncOnce() ? "config directory \(dir) re-read" : "config directory \(dir) rejected (last good config kept)")
            }
            if let accessLog {
                do {
                    try accessLog.reopen()
                    if accessLog.destination != "stdout" { done.append("access log \(accessLog.destination) reopened") }
                } catch { logger.error("SIGHUP: \(error)") }
            }
            logger.info("SIGHUP: reloaded", metadata: ["what": "\(done.isEmpty ? "nothing to reload (no --config-dir, no access log file)" : done.joined(separator: "; "))"])
            SystemdNotify.send("READY=1")
        }

        try? await gracefulShutdown()

        reloads.cancel()
        // Drain: the capture ports stop accepting (callers fail fast: connection refused, and
        // the rules stay, so nothing bypasses the mesh), requests in flight are answered, HTTP/2
        // callers get GOAWAY; then whatever is left is closed.
        SystemdNotify.send("STOPPING=1\nSTATUS=draining (up to \(IstioDuration.format(config.drainTimeout)))")
        logger.info("weft agent stopping: draining open connections", metadata: ["timeout": "\(IstioDuration.format(config.drainTimeout))"])
        let drainStarted = ContinuousClock.now
        let left = await registry.drainAll(timeout: config.drainTimeout)
        logger.info(left == 0 ? "drained" : "drain timeout: closing the connections still open",
                    metadata: ["open": "\(left)", "took": "\(ContinuousClock.now - drainStarted)"])
        watcher?.cancel()
        checker.cancel()
        renewer.cancel()
        following?.cancel()
        try? await server.close()
        for e in endpoints { try? await e.close() }
        try? FileManager.default.removeItem(atPath: config.socketPath)
        await registry.stopAll()
        exporting?.cancel()
        accessLog?.close()
        await forwarder?.close()
        try? await group.shutdownGracefully()
    }
}

extension AgentService: CustomStringConvertible {
    public var description: String { "AgentService(socket: \(config.socketPath), bridge: \(config.bridge))" }
}
