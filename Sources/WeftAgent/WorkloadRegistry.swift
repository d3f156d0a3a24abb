import Glibc
import CWeftLinux
import Foundation
import NIOCore
import Logging
import WeftConfig
import WeftControl
import WeftCore
import WeftIdentity
import WeftNetns
import WeftProxy
import WeftTelemetry

/// The agent's record of meshed namespaces: address reservations and running proxies.
/// An actor, so attach/detach from concurrent API calls are serialised per operation; a
/// netns being attached is marked so a second attach during the await is refused.
public actor WorkloadRegistry {
    private struct Attached {
        let proxy: WorkloadProxy
        let handle: NetnsHandle
    }

    private let config: AgentConfiguration
    private let logger: Logger
    private var pool: PodAddressPool
    private var reservedAt: [NetnsName: Date] = [:]
    private var attached: [NetnsName: Attached] = [:]
    private var attaching: Set<NetnsName> = []
    private var catalog: ServiceCatalog
    /// What the data path reads; republished after every change to the workloads.
    public nonisolated let directory = ServiceDirectory()
    /// Istio's standard metrics of every workload proxy of this agent (served on 15090).
    public nonisolated let metrics = MeshMetrics()
    /// One line per request or TCP connection (`--access-log`), nil when off.
    public nonisolated let accessLog: AccessLog?
    /// Spans to the OTLP collector (`--tracing-collector`), nil when off.
    public nonisolated let tracer: Tracer?

    private let dnsForwarder: DNSForwarder?
    /// Workload identities (nil with --no-mtls).
    private var identities: WorkloadIdentities?
    /// The current certificate of each attached workload, and how many it has had.
    private var issuedCertificates: [NetnsName: (IssuedCertificate, count: Int)] = [:]

    public init(config: AgentConfiguration, logger: Logger, dnsForwarder: DNSForwarder? = nil,
                identities: WorkloadIdentities? = nil, accessLog: AccessLog? = nil, tracer: Tracer? = nil) throws {
        self.accessLog = accessLog
        self.tracer = tracer
        self.config = config
        self.logger = logger
        self.dnsForwarder = dnsForwarder
        self.identities = identities
        self.pool = try PodAddressPool(cidr: config.podCIDR)
        self.catalog = try ServiceCatalog(vipRange: config.serviceCIDR, vip6Prefix: config.serviceCIDRv6)
        directory.publish(catalog)
    }

    private var store: StateStore { StateStore(directory: config.stateDirectory) }

    /// Re-attaches the workloads of the previous run whose netns still exists. Returns how
    /// many came back; the others are logged and forgotten.
    public func restore() async -> Int {
        catalog.restore(store.loadVIPs())
        let specs: [WorkloadSpec]
        do { specs = try store.load() } catch {
            logger.error("state: \(error)")
            return 0
        }
        var restored = 0
        for spec in specs {
            guard NetnsManager.exists(spec.netns) else {
                logger.notice("state: netns \(spec.netns) of workload \(spec.name) is gone; forgetting it")
                continue
            }
            do {
                if let ip = spec.podIP, case .v4 = ip, config.podCIDR.contains(ip) { try pool.reserve(ip, for: spec.netns) }
                try await attach(spec, persist: false)
                restored += 1
            } catch {
                pool.release(spec.netns)
                logger.error("state: cannot re-attach workload \(spec.name) (netns \(spec.netns)): \(error)")
            }
        }
        persist()
        return restored
    }

    private func persist() {
        do {
            try store.save(attached.values.map(\.proxy.spec))
            try store.saveVIPs(catalog.allocations)
        } catch {
            logger.error("state: \(error)")
        }
    }

    /// Recomputes services and endpoints from the attached workloads and publishes them.
    /// Other nodes' workloads (from the control plane): endpoints of their services, reached
    /// through their tunnel port with the identity the control plane gives them.
    private var remoteWorkloads: [WorkloadSpec] = []
    private var remoteRoutes = RemoteRoutes()
    private var warnedForwarding = false

    /// The other nodes' part of the mesh-wide registry: their workloads become endpoints
    /// here, and their pod blocks get host routes through their node address.
    public func applyRemote(_ nodes: [NodeWorkloads]) {
        // Each node's share of a global rate limit while the coordinator is unreachable.
        directory.globalLimits.setNodeCount(nodes.count + 1)
        var wanted: [CIDR: IPAddress] = [:]
        for node in nodes {
            guard let route = node.route else { continue }
            if config.podCIDR.contains(route.podCIDR.address) || route.podCIDR.contains(config.podCIDR.address) {
                logger.error("node \(node.node)'s pod block \(route.podCIDR) overlaps this node's \(config.podCIDR); its pods are not routed")
                continue
            }
            wanted[route.podCIDR] = route.address
        }
        // Workloads of a node that other hosts cannot reach are left out (no route to them).
        let reachable = nodes.filter { $0.route != nil && wanted[$0.route!.podCIDR] != nil }
        let remote = reachable.flatMap(\.workloads)
        for problem in remoteRoutes.apply(wanted) { logger.error("cross-host \(problem)") }
        if !wanted.isEmpty, !warnedForwarding, !RemoteRoutes.forwardingEnabled {
            warnedForwarding = true
            logger.warning("IPv4 forwarding is off on this host: pods on other hosts cannot reach this node's pods",
                           metadata: ["fix": "sysctl -w net.ipv4.ip_forward=1"])
        }
        guard remote != remoteWorkloads else { return }
        remoteWorkloads = remote
        logger.info("mesh registry: \(remote.count) workload(s) on \(reachable.count) other node(s)")
        republish()
    }

    private func republish() {
        var peers: [IPAddress: ServiceDirectory.Peer] = [:]
        for entry in attached.values {
            guard let id = entry.proxy.tls?.identity else { continue }
            let spec = entry.proxy.spec
            let peer = ServiceDirectory.Peer(identity: id, namespace: spec.namespace.rawValue, labels: spec.labels,
                                                 workload: spec.name, service: spec.service.rawValue)
            for ip in [spec.podIP, spec.podIPv6].compactMap({ $0 }) { peers[ip] = peer }
        }
        if let identities {
            for spec in remoteWorkloads {
                guard let id = try? identities.identity(of: spec) else { continue }
                let peer = ServiceDirectory.Peer(identity: id, namespace: spec.namespace.rawValue, labels: spec.labels,
                                                 workload: spec.name, service: spec.service.rawValue)
                for ip in [spec.podIP].compactMap({ $0 }) where peers[ip] == nil { peers[ip] = peer }
            }
        }
        directory.publish(peers: peers)
        do {
            try catalog.rebuild(from: attached.values.map(\.proxy.spec) + remoteWorkloads.map { remote in
                var spec = remote
                spec.podIPv6 = nil  // cross-host routes are IPv4 only
                return spec
            })
        } catch {
            logger.error("service registry: \(error)")
        }
        directory.publish(catalog)
    }

    private var configStore = ConfigStore()

    /// Applies config all-or-nothing; on success the new routes are published and saved.
    public func applyConfig(_ files: [ConfigFile]) throws -> ConfigReply {
        try checkLocalConfigAllowed()
        let reply = configStore.apply(files)
        if !reply.rejected { commitConfig() }
        return reply
    }

    public func deleteConfig(_ files: [ConfigFile]) throws -> ConfigReply {
        try checkLocalConfigAllowed()
        let reply = configStore.delete(files)
        if !reply.rejected { commitConfig() }
        return reply
    }

    /// The watched config directory changed: its files replace what it defined before.
    public func syncConfigDirectory(_ files: [ConfigFile]) -> ConfigReply {
        let reply = configStore.syncDirectory(files)
        if !reply.rejected, !reply.changes.isEmpty { commitConfig() }
        return reply
    }

    /// With a control plane, config changes go there (a local change would be overwritten
    /// by the next snapshot, and other nodes would never see it).
    private func checkLocalConfigAllowed() throws {
        if let control = config.control {
            throw WeftError(.invalidArgument, "this agent takes its config from the control plane at \(control.address)",
                            hint: "apply it there: weft apply --control-socket \(WeftDefaults.controlSocket) -f FILE (on the control plane's host)")
        }
    }

    public func currentConfig() -> ConfigReply {
        var reply = ConfigReply()
        reply.documents = configStore.documents
        reply.version = configStore.version
        return reply
    }

    /// A control plane's snapshot replaces the whole config, all-or-nothing, and only if
    /// it can be persisted too (so a restart comes back to what was acknowledged).
    public func applySnapshot(documents: [String], version: Int) -> ConfigReply {
        var candidate = configStore
        var reply = candidate.replaceAll(documents: documents, version: version)
        guard !reply.rejected else { return reply }
        do {
            try candidate.save(to: config.stateDirectory)
        } catch {
            reply.rejected = true
            reply.diagnostics.append("cannot persist config version \(version) to \(config.stateDirectory): \(error)")
            reply.version = configStore.version
            return reply
        }
        configStore = candidate
        directory.publish(routes: RouteTable(resources: configStore.resources))
        logger.info("config version \(version) from the control plane in force (\(configStore.resources.count) resource(s))",
                    metadata: ["changes": "\(reply.changes.joined(separator: ", "))"])
        return reply
    }

    public var configResourceCount: Int { configStore.resources.count }

    /// Config of the previous run, from the state directory (at `version` when it came
    /// from a control plane, so the agent reports the version it had acknowledged).
    public func restoreConfig(version: Int? = nil) {
        guard let saved = ConfigStore.load(from: config.stateDirectory) else { return }
        let reply: ConfigReply
        if let version {
            let documents = saved.content.components(separatedBy: "---\n").filter { !$0.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty }
            reply = configStore.replaceAll(documents: documents, version: version)
        } else {
            reply = configStore.apply([saved])
        }
        if reply.rejected {
            logger.error("state: saved config no longer valid, starting without it: \(reply.diagnostics.joined(separator: "; "))")
        } else {
            configStore.restoreDirectoryOrigins(from: config.stateDirectory)
            directory.publish(routes: RouteTable(resources: configStore.resources))
            logger.info("restored config version \(configStore.version) (\(configStore.resources.count) resource(s))")
        }
    }

    private func commitConfig() {
        directory.publish(routes: RouteTable(resources: configStore.resources))
        do { try configStore.save(to: config.stateDirectory) } catch { logger.error("state: \(error)") }
        logger.info("config version \(configStore.version) in force (\(configStore.resources.count) resource(s))")
    }

    public func services() async -> [ServiceStatus] {
        await reapVanished()
        let now = NIODeadline.now().uptimeNanoseconds
        return catalog.statuses.map { status in
            var s = status
            s.ejected = directory.ejected(host: status.key.fqdn, now: now)
            s.unhealthy = directory.unhealthy(host: status.key.fqdn)
            s.breaker = directory.breakerPhase(host: status.key.fqdn)
            return s
        }
    }

    public var gateway: IPAddress { pool.gateway }

    public func allocate(for netns: NetnsName) async throws -> PodNetwork {
        await reapVanished()
        collectStaleReservations()
        if let existing = attached[netns] {
            throw WeftError(.alreadyExists, "netns \(netns) is already meshed as workload '\(existing.proxy.spec.name)'")
        }
        let ip = try pool.allocate(for: netns)
        reservedAt[netns] = Date()
        var network = PodNetwork(podIP: ip, prefixLength: pool.cidr.prefixLength, gateway: pool.gateway, bridge: config.bridge)
        if let prefix = config.podCIDRv6 {
            network.podIPv6 = PodAddressPool.ipv6(for: ip, in: prefix)
            network.prefixLengthV6 = prefix.prefixLength
            network.gatewayV6 = PodAddressPool.ipv6Gateway(in: prefix)
        }
        return network
    }

    public func release(_ netns: NetnsName) {
        guard attached[netns] == nil else { return }
        pool.release(netns)
        reservedAt[netns] = nil
    }

    public func attach(_ spec: WorkloadSpec) async throws {
        try await attach(spec, persist: true)
    }

    private func attach(_ spec: WorkloadSpec, persist shouldPersist: Bool) async throws {
        await reapVanished()
        if let existing = attached[spec.netns] {
            throw WeftError(.alreadyExists, "netns \(spec.netns) is already meshed as workload '\(existing.proxy.spec.name)'",
                            hint: "detach it first with `weft detach --netns \(spec.netns)`")
        }
        if let clash = attached.values.first(where: { $0.proxy.spec.name == spec.name }) {
            throw WeftError(.alreadyExists, "a workload named '\(spec.name)' is already attached (netns \(clash.handle.name))",
                            hint: "pick another --name")
        }
        guard attaching.insert(spec.netns).inserted else {
            throw WeftError(.alreadyExists, "netns \(spec.netns) is being attached by another request")
        }
        defer { attaching.remove(spec.netns) }
        let handle = try NetnsHandle(opening: spec.netns)
        // A namespace made with `ip netns add` has lo down; the outbound listener needs it.
        let rc = weft_link_up(handle.fd, "lo", 0)
        guard rc == 0 else { throw WeftError(.system, "cannot bring up lo in netns \(spec.netns): \(errnoText(-rc))") }
        var spec = spec
        if spec.podIP == nil { spec.podIP = handle.ipv4Addresses().first }
        var tls: WorkloadTLS?
        var issued: IssuedCertificate?
        if let identities {
            if case .control(let link, _) = identities.signer {
                // The control plane signs only workloads this node has registered. Unreachable,
                // it is skipped: a stored certificate may still do (`issue` decides).
                do {
                    try await link.register(attached.values.map(\.proxy.spec).filter { $0.netns != spec.netns } + [spec])
                } catch let error as WeftError where error.code == .agentUnavailable {
                    logger.notice("cannot register \(spec.name) with the control plane: \(error.message)")
                }
            }
            let (credentials, certificate) = try await identities.issue(for: spec)
            tls = WorkloadTLS()
            try tls?.update(credentials)
            issued = certificate
        }
        let proxy = try await WorkloadProxy.start(
            spec: spec, nsfd: handle.fd, netnsCookie: handle.cookie, settings: config.capture,
            directory: directory, dnsForwarder: dnsForwarder, connectTimeout: config.connectTimeout,
            requestHeadersTimeout: config.requestHeadersTimeout.map(TimeAmount.init), idleTimeout: config.idleTimeout.map(TimeAmount.init),
            maxConnections: config.maxConnectionsPerWorkload, maxRequestBodyBytes: config.maxRequestBodyBytes,
            retryBudget: config.retryBudget,
            tls: tls, metrics: config.metricsAddress == nil ? nil : metrics, accessLog: accessLog, tracer: tracer, logger: logger,
            now: Date().timeIntervalSince1970)
        attached[spec.netns] = Attached(proxy: proxy, handle: handle)
        if let issued {
            issuedCertificates[spec.netns] = (issued, 1)
            logger.info("issued certificate", metadata: ["workload": "\(spec.name)", "identity": "\(issued.identity)",
                                                         "serial": "\(issued.serial)", "notAfter": "\(issued.notAfter)"])
        }
        republish()
        if shouldPersist { persist() }
        reservedAt[spec.netns] = nil
        logger.info("attached workload", metadata: ["workload": "\(spec.name)", "netns": "\(spec.netns)",
                                                    "service": "\(spec.service)", "ip": "\(spec.podIP.map { "\($0)" } ?? "-")"])
    }

    public func detach(_ netns: NetnsName, force: Bool = false) async throws {
        guard let entry = attached[netns] else {
            throw WeftError(.notFound, "netns \(netns) is not attached to this agent", hint: "see `weft get workloads`")
        }
        if entry.proxy.spec.ownedByRun == true && !force {
            throw WeftError(.permissionDenied,
                            "netns \(netns) belongs to a running `weft run` (workload \(entry.proxy.spec.name)); detaching it would let its traffic bypass the mesh",
                            hint: "stop that command instead (it cleans up after itself), or pass --force")
        }
        attached[netns] = nil
        issuedCertificates[netns] = nil
        identities?.forget(netns: netns.rawValue)
        await entry.proxy.stop()
        pool.release(netns)
        republish()
        persist()
        await registerWithControlPlane()
        logger.info("detached workload", metadata: ["workload": "\(entry.proxy.spec.name)", "netns": "\(netns)"])
    }

    /// Detaches workloads whose netns was deleted (or replaced by a new one of the same
    /// name) behind the agent's back, e.g. by `ip netns del` or a killed `weft run`.
    public func reapVanished() async {
        for (name, entry) in attached {
            let current = try? NetnsHandle(opening: name)
            guard current?.cookie != entry.handle.cookie else { continue }
            attached[name] = nil
            issuedCertificates[name] = nil
            await entry.proxy.stop()
            pool.release(name)
            republish()
            persist()
            await registerWithControlPlane()
            logger.notice("netns \(name) disappeared; detached workload \(entry.proxy.spec.name)")
        }
    }

    /// The specs of every attached workload.
    public func specs() -> [WorkloadSpec] { attached.values.map(\.proxy.spec) }

    /// After a detach: the control plane stops signing for what left (best effort; the next
    /// subscription registers the full list again).
    private func registerWithControlPlane() async {
        guard case .control(let link, _)? = identities?.signer else { return }
        do { try await link.register(specs()) } catch {
            logger.notice("cannot update the control plane's list of this node's workloads: \(error)")
        }
    }

    /// Renews every certificate past its half life (a fresh key each time). Established
    /// connections keep the certificate they started with; new ones use the new one.
    public func renewDueCertificates(now: Date = Date(), all: Bool = false) async {
        guard let identities else { return }
        for (netns, (current, count)) in issuedCertificates where all || now >= current.renewAt {
            guard let entry = attached[netns], let tls = entry.proxy.tls else { continue }
            do {
                let (credentials, issued) = try await identities.issue(for: entry.proxy.spec, now: now)
                try tls.update(credentials)
                issuedCertificates[netns] = (issued, count + 1)
                logger.info("renewed certificate", metadata: ["workload": "\(entry.proxy.spec.name)", "identity": "\(issued.identity)",
                                                              "serial": "\(issued.serial)", "notAfter": "\(issued.notAfter)"])
            } catch {
                let left = current.notAfter.timeIntervalSince(now)
                logger.error("cannot renew certificate of \(entry.proxy.spec.name) (expires in \(Int(left)) s): \(error)")
            }
        }
    }

    /// Root rotation of the agent's own CA: `finish == false` makes a new signing root and
    /// keeps trusting the old one; `finish == true` stops trusting the old ones. Either way
    /// the CA is reloaded and every workload gets a new certificate and bundle at once;
    /// established connections keep theirs (TLS does not re-verify a running session).
    public func rotateCA(finish: Bool) async throws -> CertificatesReply {
        guard identities != nil else { throw WeftError(.notFound, "this agent runs without workload identities (--no-mtls)") }
        try checkOwnCA()
        guard config.caCertPath == nil else {
            throw WeftError(.invalidArgument, "the CA is the operator's (--ca-cert): replace its files, then run `weft ca reload`")
        }
        let directory = config.stateDirectory + "/ca"
        if finish {
            try CertificateAuthority.finishRotation(directory: directory)
        } else {
            _ = try CertificateAuthority.beginRotation(directory: directory, trustDomain: config.trustDomain)
        }
        return try await reloadCA()
    }

    private func checkOwnCA() throws {
        if let control = config.control {
            throw WeftError(.invalidArgument, "workload certificates come from the control plane at \(control.address); its CA is not this agent's to rotate")
        }
    }

    /// Re-reads the CA (and its bundle) and re-issues every workload's certificate.
    public func reloadCA() async throws -> CertificatesReply {
        guard let current = identities else { throw WeftError(.notFound, "this agent runs without workload identities (--no-mtls)") }
        try checkOwnCA()
        guard case .local(_, let lifetime) = current.signer else { throw WeftError(.system, "no local CA") }
        let ca = try WorkloadIdentities.loadCA(config)
        identities = WorkloadIdentities(ca: ca, lifetime: lifetime)
        logger.notice("certificate authority reloaded", metadata: ["roots": "\(ca.rootSerials.joined(separator: ","))"])
        await renewDueCertificates(all: true)
        return try await certificates()
    }

    public func certificates() async throws -> CertificatesReply {
        guard let identities else {
            throw WeftError(.notFound, "this agent runs without workload identities (--no-mtls)")
        }
        let list = issuedCertificates.compactMap { netns, value -> CertificateStatus? in
            guard let entry = attached[netns] else { return nil }
            let (c, count) = value
            return CertificateStatus(workload: entry.proxy.spec.name, netns: netns.rawValue, identity: c.identity.description,
                                     serial: c.serial, notBefore: c.notBefore, notAfter: c.notAfter, renewAt: c.renewAt,
                                     issued: count, chainPEM: c.chainPEM)
        }.sorted { $0.workload < $1.workload }
        return CertificatesReply(trustDomain: identities.trustDomain, bundlePEM: await identities.bundlePEM, workloads: list)
    }

    public func list() async -> [WorkloadStatus] {
        await reapVanished()
        return attached.values.map(\.proxy.status).sorted { $0.spec.name < $1.spec.name }
    }

    /// Every proxy drains at once (see WorkloadProxy.drain); returns the connections still
    /// open when `timeout` passed.
    public func drainAll(timeout: Duration) async -> Int {
        let draining = attached.values.map { entry in
            let proxy = entry.proxy
            return Task { await proxy.drain(timeout: timeout) }
        }
        var left = 0
        for task in draining { left += await task.value }
        return left
    }

    public func stopAll() async {
        for (_, entry) in attached { await entry.proxy.stop() }
        attached.removeAll()
    }

    /// Reservations from a `weft run` that died before attaching: freed after a minute if
    /// their netns never appeared or is gone.
    private func collectStaleReservations() {
        let now = Date()
        for (netns, at) in reservedAt where now.timeIntervalSince(at) > 60 && attached[netns] == nil {
            if !NetnsManager.exists(netns) || now.timeIntervalSince(at) > 600 {
                pool.release(netns)
                reservedAt[netns] = nil
            }
        }
    }
}
