import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2Posix
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import WeftCore
import WeftIdentity

/// Everything `weft control` is started with.
public struct ControlConfiguration: Sendable {
    /// gRPC listener for agents (TLS). IPv4 or IPv6 literal.
    public var listenHost = "0.0.0.0"
    public var listenPort = ControlAPI.defaultPort
    public var stateDirectory = WeftDefaults.controlStateDirectory
    /// Root-only local API for the CLI (`weft apply --control-socket`, tokens, agents).
    public var socketPath = WeftDefaults.controlSocket
    public var trustDomain = "weft.local"
    public var nodeCertificateLifetime: Duration = .seconds(7 * 24 * 3600)
    public var workloadCertificateLifetime: Duration = .seconds(24 * 3600)
    /// Lifetime of the control plane's own serving certificate; renewed at half life.
    public var servingCertificateLifetime: Duration = .seconds(24 * 3600)
    /// etcd endpoints holding the store (empty: the state directory alone).
    public var etcd: [EtcdClient.Endpoint] = []

    public init() {}
}

/// `weft control`: the config store, CA and join tokens, served to agents over gRPC on
/// 15012 and to the CLI on a local socket. Agents keep serving their last good config
/// while it is away; it keeps nothing in memory that is not also in its state directory.
public struct ControlServer: Service {
    let config: ControlConfiguration
    let logger: Logger

    public init(config: ControlConfiguration, logger: Logger) {
        self.config = config
        self.logger = logger
    }

    public func run() async throws {
        var mirror: EtcdMirror?
        if !config.etcd.isEmpty {
            let m = EtcdMirror(client: EtcdClient(endpoints: config.etcd, group: MultiThreadedEventLoopGroup.singleton))
            try SecretFile.makeDirectory(config.stateDirectory)
            let restored = try await m.hydrate(into: config.stateDirectory)
            logger.info("store in etcd", metadata: ["endpoints": "\(config.etcd.map(\.description).joined(separator: ","))", "keys": "\(restored)"])
            mirror = m
        }
        let plane = try ControlPlane(stateDirectory: config.stateDirectory, trustDomain: config.trustDomain,
                                     nodeCertificateLifetime: config.nodeCertificateLifetime,
                                     workloadCertificateLifetime: config.workloadCertificateLifetime, mirror: mirror, logger: logger)
        try await mirror?.seed(from: config.stateDirectory)
        try await plane.takeStoreRevisions()
        // Other control planes on the same store: what they change reaches this one's agents.
        let poller = mirror.map { _ in
            Task {
                while !Task.isCancelled {
                    try? await Task.sleep(for: .milliseconds(250))
                    await plane.refresh()
                }
            }
        }
        let key = WorkloadKey()
        let serving = try await plane.issueServingCertificate(key: key, lifetime: config.servingCertificateLifetime)
        let reloader = try ServingCertificate(issued: serving, keyPEM: try key.privateKeyPEM())
        let roots = await plane.roots
        let bundle = try await plane.bundle()
        let address: GRPCNIOTransportCore.SocketAddress = config.listenHost.contains(":")
            ? .ipv6(host: config.listenHost, port: config.listenPort) : .ipv4(host: config.listenHost, port: config.listenPort)
        let logger = self.logger
        let transport = HTTP2ServerTransport.Posix(
            address: address,
            transportSecurity: .tls(certificateChain: serving.chainPEM.map { .bytes(Array($0.utf8), format: .pem) },
                                    privateKey: .bytes(Array(try key.privateKeyPEM().utf8), format: .pem)) { tls in
                tls.clientCertificateVerification = .noHostnameVerification
                tls.trustRoots = .certificates([.bytes(Array(bundle.bundlePEM.utf8), format: .pem)])
                tls.customVerificationCallback = ControlTLS.clientVerifier(roots: roots, logger: logger)
                tls.certificateReloader = reloader
            },
            config: .defaults { c in
                c.rpc.maxRequestPayloadSize = ControlAPI.maxMessageBytes
                // Dead agents are noticed within ~25 s; agents may ping every 5 s.
                c.connection.keepalive = .init(time: .seconds(15), timeout: .seconds(10),
                                               clientBehavior: .init(minPingIntervalWithoutCalls: .seconds(5), allowWithoutCalls: true))
            })
        let buckets = RateLimitBuckets(etcd: mirror?.client)
        let sweeper = mirror.map { _ in
            Task {
                while !Task.isCancelled {
                    try? await Task.sleep(for: .seconds(60))
                    do { try await buckets.sweep() } catch { logger.notice("cannot sweep idle rate-limit buckets in etcd: \(error)") }
                }
            }
        }
        let server = GRPCServer(transport: transport, services: [ControlService(plane: plane, buckets: buckets, logger: logger)])
        let serving_ = Task { try await server.serve() }
        let listening: GRPCNIOTransportCore.SocketAddress
        do {
            listening = try await transport.listeningAddress
        } catch {
            serving_.cancel()
            throw WeftError(.addressInUse, "cannot listen on \(config.listenHost):\(config.listenPort): \(error)")
        }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let api = ControlLocalAPI(plane: plane)
        let socket: Channel
        do {
            socket = try await LocalSocket.bind(path: config.socketPath, what: "control plane", group: group, logger: logger) { bytes in
                await api.respond(to: bytes)
            }
        } catch {
            server.beginGracefulShutdown()
            try? await group.shutdownGracefully()
            throw error
        }
        let pin = await plane.caPin, version = await plane.snapshot.version
        logger.info("weft control ready", metadata: ["grpc": "\(listening)", "socket": "\(config.socketPath)",
                                                     "trustDomain": "\(config.trustDomain)", "caPin": "\(pin)",
                                                     "configVersion": "\(version)"])
        SystemdNotify.send("READY=1\nSTATUS=serving \(listening)")
        let lifetime = config.servingCertificateLifetime
        let renewer = Task {
            while !Task.isCancelled {
                try? await Task.sleep(for: .seconds(5))
                guard ServingCertificate.due(reloader.issued, now: Date()) else { continue }
                do {
                    let key = WorkloadKey()
                    let issued = try await plane.issueServingCertificate(key: key, lifetime: lifetime)
                    try reloader.replace(with: issued, keyPEM: try key.privateKeyPEM())
                    logger.info("serving certificate renewed", metadata: ["serial": "\(issued.serial)", "notAfter": "\(issued.notAfter)"])
                } catch {
                    logger.error("cannot renew the serving certificate (expires \(reloader.issued.notAfter)): \(error)")
                }
            }
        }

        try? await gracefulShutdown()

        SystemdNotify.send("STOPPING=1")
        logger.info("weft control stopping")
        renewer.cancel()
        poller?.cancel()
        sweeper?.cancel()
        await plane.shutdown()
        server.beginGracefulShutdown()
        _ = try? await serving_.value
        try? await socket.close()
        try? FileManager.default.removeItem(atPath: config.socketPath)
        try? await group.shutdownGracefully()
    }
}

/// The control plane's local API: config, tokens, agents. Workload operations are the
/// agent's, and say so.
struct ControlLocalAPI: Sendable {
    let plane: ControlPlane

    func respond(to bytes: [UInt8]) async -> AgentResponse {
        let request: AgentRequest
        switch LocalSocket.decode(bytes) {
        case .success(let r): request = r
        case .failure(let e): return .failure(e)
        }
        do {
            switch request {
            case .ping:
                return AgentResponse(version: WeftVersion.current)
            case .applyConfig(let files):
                return AgentResponse(config: await plane.applyConfig(files))
            case .deleteConfig(let files):
                return AgentResponse(config: await plane.deleteConfig(files))
            case .getConfig:
                return AgentResponse(config: await plane.currentConfig())
            case .createToken(let ttl):
                var r = AgentResponse()
                r.token = try await plane.createToken(ttl: TimeInterval(ttl))
                return r
            case .listAgents:
                var r = AgentResponse()
                r.agents = await plane.agentStatuses()
                return r
            case .allocate, .release, .attach, .detach, .listWorkloads, .listServices, .listCertificates, .rotateCA, .reloadCA:
                throw WeftError(.invalidArgument, "this is the control plane's socket; workloads and their certificates are the agent's",
                                hint: "ask the agent (its socket is \(WeftDefaults.agentSocket))")
            }
        } catch let error as WeftError {
            return .failure(error)
        } catch {
            return .failure(WeftError(.system, "\(error)"))
        }
    }
}
