import Foundation
import Logging
import WeftConfig
import WeftCore
import WeftIdentity
import X509

/// The control plane's state and decisions: the config store (what `weft apply` sent it),
/// the CA, the join tokens, the agents it knows and the open subscriptions. An actor: the
/// gRPC handlers and the local API call into it concurrently.
///
/// Persisted in its state directory: `config.yaml` + `config-version.json` (the version
/// survives restarts, so agents never see it go backwards), `tokens.json` (hashes only),
/// `agents.json`, `ca/`. Everything secret is 0600 in 0700 directories.
public actor ControlPlane {
    public let trustDomain: String
    public let stateDirectory: String
    private let logger: Logger
    private var ca: CertificateAuthority
    private var store = ConfigStore()
    private var tokens: JoinTokens
    /// Lifetime of node certificates; agents renew them at half life.
    public let nodeCertificateLifetime: Duration
    /// The store's identity: a new one means a new, unrelated config history.
    public let storeID: String

    private struct Agent: Codable {
        var node: String
        var identity: String
        var address: String?
        var lastSeen: Date
        var agentVersion: String?
        var ackedVersion: Int?
        var nackedVersion: Int?
        var nackReason: String?
    }

    private var agents: [String: Agent] = [:]
    /// etcd, when the store is there (`--store etcd://…`); nil: the state directory alone.
    private let mirror: EtcdMirror?
    /// The etcd revisions of the config and the tokens as this control plane last saw them
    /// (another control plane on the same store changes them: `refresh` picks that up).
    private var configRevision: Int64 = 0
    private var tokensRevision: Int64 = 0
    /// What each node says is attached to it: the only workloads it may get certificates for.
    private var workloads: [String: [WorkloadSpec]] = [:]
    /// How each node's pods are reached from other hosts.
    private var routes: [String: NodeRoute] = [:]
    /// Lifetime of workload certificates (agents renew at half life).
    public let workloadCertificateLifetime: Duration
    private var subscribers: [UUID: (node: String, continuation: AsyncStream<ConfigSnapshot>.Continuation)] = [:]

    public init(stateDirectory: String, trustDomain: String, nodeCertificateLifetime: Duration = .seconds(7 * 24 * 3600),
                workloadCertificateLifetime: Duration = .seconds(24 * 3600),
                maxConfigBytes: Int = ControlAPI.maxMessageBytes * 3 / 4, mirror: EtcdMirror? = nil, logger: Logger) throws {
        self.mirror = mirror
        self.workloadCertificateLifetime = workloadCertificateLifetime
        self.maxConfigBytes = maxConfigBytes
        self.stateDirectory = stateDirectory
        self.trustDomain = trustDomain
        self.logger = logger
        self.nodeCertificateLifetime = nodeCertificateLifetime
        try SecretFile.makeDirectory(stateDirectory)
        ca = try CertificateAuthority.loadOrCreate(directory: stateDirectory + "/ca", trustDomain: trustDomain)
        tokens = try JoinTokens.load(from: stateDirectory + "/tokens.json")
        storeID = try Self.loadOrCreateStoreID(stateDirectory + "/store-id")
        if let data = FileManager.default.contents(atPath: stateDirectory + "/agents.json"),
           let list = try? JSONDecoder.iso.decode([Agent].self, from: data) {
            agents = Dictionary(list.map { ($0.node, $0) }, uniquingKeysWith: { a, _ in a })
        }
        if let data = FileManager.default.contents(atPath: stateDirectory + "/workloads.json"),
           let saved = try? JSONDecoder.iso.decode([NodeWorkloads].self, from: data) {
            for n in saved {
                workloads[n.node] = n.workloads
                routes[n.node] = n.route
            }
        }
        if let saved = ConfigStore.load(from: stateDirectory) {
            let version = (FileManager.default.contents(atPath: stateDirectory + "/config-version.json"))
                .flatMap { try? JSONDecoder().decode(Int.self, from: $0) } ?? 1
            let documents = saved.content.components(separatedBy: "---\n").filter { !$0.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty }
            let reply = store.replaceAll(documents: documents, version: version)
            if reply.rejected {
                throw WeftError(.invalidArgument, "the stored config in \(stateDirectory)/config.yaml no longer validates: \(reply.diagnostics.joined(separator: "; "))",
                                hint: "fix or move the file away")
            }
        }
    }

    private static func loadOrCreateStoreID(_ file: String) throws -> String {
        if let text = try? String(contentsOfFile: file, encoding: .utf8), !text.isEmpty {
            return text.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        let id = UUID().uuidString.lowercased()
        try SecretFile.write(id + "\n", to: file)
        return id
    }

    public static func controlIdentity(trustDomain: String) throws -> SpiffeID {
        try SpiffeID(trustDomain: trustDomain, segments: ["weft-system", "control"])
    }

    public static func nodeIdentity(trustDomain: String, node: String) throws -> SpiffeID {
        try SpiffeID(trustDomain: trustDomain, segments: ["weft-system", "node", node])
    }

    /// Node names: DNS labels (lowercase letters, digits, '-', '.'), 1–63 characters.
    public static func checkNodeName(_ node: String) throws {
        let allowed = Set("abcdefghijklmnopqrstuvwxyz0123456789-.")
        guard (1...63).contains(node.count), node.allSatisfy({ allowed.contains($0) }),
              node.first != "-", node.first != ".", node.last != "-", node.last != "." else {
            throw WeftError(.invalidArgument, "node name \"\(node)\" refused: use 1-63 lowercase letters, digits, '-' or '.'")
        }
    }

    // MARK: - identity

    public var roots: [Certificate] { ca.roots }
    public var caPin: String { (try? ChainVerifier.pin(of: ca.roots[0])) ?? "" }

    public func bundle() throws -> BundleReply {
        BundleReply(trustDomain: trustDomain, bundlePEM: ca.bundlePEM,
                    controlIdentity: try Self.controlIdentity(trustDomain: trustDomain).description)
    }

    /// The control plane's own serving certificate (issued at start, renewed at half life).
    public func issueServingCertificate(key: WorkloadKey, lifetime: Duration) throws -> IssuedCertificate {
        let id = try Self.controlIdentity(trustDomain: trustDomain)
        return try ca.sign(csrPEM: try key.csrPEM(for: id), as: id, lifetime: lifetime)
    }

    /// A node certificate for `request.node`: with a valid join token, or (renewal) when the
    /// caller already proved that very node identity (`authenticatedNode`).
    public func join(_ request: JoinRequest, authenticatedNode: String?, address: String?, now: Date = Date()) async throws -> JoinReply {
        try Self.checkNodeName(request.node)
        if let authenticatedNode {
            guard authenticatedNode == request.node else {
                throw WeftError(.permissionDenied, "node \(authenticatedNode) may renew only its own certificate, not \(request.node)'s")
            }
        } else {
            do { try tokens.check(request.token, now: now) } catch where mirror != nil {
                await refresh()  // a token just made through another control plane on the same store
                try tokens.check(request.token, now: now)
            }
        }
        let id = try Self.nodeIdentity(trustDomain: trustDomain, node: request.node)
        let issued = try ca.sign(csrPEM: request.csrPEM, as: id, lifetime: nodeCertificateLifetime, now: now)
        var agent = agents[request.node] ?? Agent(node: request.node, identity: id.description, lastSeen: now)
        agent.address = address ?? agent.address
        agent.lastSeen = now
        agents[request.node] = agent
        saveAgents()
        logger.info(authenticatedNode == nil ? "node joined" : "node certificate renewed",
                    metadata: ["node": "\(request.node)", "serial": "\(issued.serial)", "notAfter": "\(issued.notAfter)",
                               "address": "\(address ?? "?")"])
        return JoinReply(identity: id.description, chainPEM: issued.chainPEM, bundlePEM: ca.bundlePEM)
    }

    /// The node a verified client certificate names (nil for an agent's bootstrap
    /// certificate, which names none).
    public func node(of chain: [Certificate], now: Date = Date()) throws -> String? {
        guard let leaf = chain.first else { return nil }
        if ChainVerifier.isSelfSigned(leaf) { return nil }
        let id = try ChainVerifier.verify(chain, roots: ca.roots, now: now)
        guard id.trustDomain == trustDomain, id.segments.count == 3, id.segments[0] == "weft-system", id.segments[1] == "node" else {
            throw WeftError(.permissionDenied, "\(id) is not a node identity of trust domain \(trustDomain)")
        }
        return id.segments[2]
    }

    // MARK: - workloads

    /// The calling node's complete list of attached workloads.
    /// The most workloads one node may register (every agent receives the whole registry).
    public static let maxWorkloadsPerNode = 10_000

    public func register(_ list: [WorkloadSpec], route: NodeRoute? = nil, node: String, now: Date = Date()) async throws -> RegisterReply {
        guard list.count <= Self.maxWorkloadsPerNode else {
            throw WeftError(.invalidArgument, "node \(node) registered \(list.count) workloads; at most \(Self.maxWorkloadsPerNode) per node")
        }
        if let route {
            for (other, r) in routes where other != node && (r.podCIDR.contains(route.podCIDR.address) || route.podCIDR.contains(r.podCIDR.address)) {
                throw WeftError(.invalidArgument, "node \(node)'s pod block \(route.podCIDR) overlaps node \(other)'s \(r.podCIDR)",
                                hint: "give every node its own --pod-cidr")
            }
        }
        if let route {
            // A node speaks only for its own pod block: a workload claiming an address outside
            // it (another node's pod) would make other agents expect the wrong identity there.
            let outside = list.filter { $0.podIP.map { !route.podCIDR.contains($0) } ?? false }
            guard outside.isEmpty else {
                throw WeftError(.permissionDenied, "node \(node) registered workload(s) outside its pod block \(route.podCIDR): "
                                + outside.map { "\($0.name) at \($0.podIP!)" }.joined(separator: ", "))
            }
        }
        let changed = workloads[node] != list || routes[node] != route
        if changed, let mirror {
            do { try await mirror.putNode(NodeWorkloads(node: node, route: route, workloads: list)) } catch {
                throw WeftError(.agentUnavailable, "the registry in etcd did not take node \(node)'s workloads: \(error)")
            }
        }
        workloads[node] = list
        routes[node] = route
        agents[node]?.lastSeen = now
        saveAgents()
        if changed {
            logger.info("workloads registered", metadata: ["node": "\(node)", "count": "\(list.count)", "route": "\(route.map { "\($0.podCIDR) via \($0.address)" } ?? "none")"])
            publish()
        }
        return RegisterReply(registered: list.count)
    }

    /// The mesh-wide registry, as agents get it.
    public var registry: [NodeWorkloads] {
        Set(workloads.keys).union(routes.keys).sorted().map { NodeWorkloads(node: $0, route: routes[$0], workloads: workloads[$0] ?? []) }
    }

    public func registeredWorkloads(node: String) -> [WorkloadSpec] { workloads[node] ?? [] }

    /// A certificate for a workload of the calling node, as the identity its registration
    /// gives it; any other workload (unregistered, or another node's) is refused.
    public func sign(_ request: SignRequest, node: String, now: Date = Date()) throws -> SignReply {
        guard let spec = workloads[node]?.first(where: { $0.netns.rawValue == request.workload }) else {
            let elsewhere = workloads.first { $0.key != node && $0.value.contains { $0.netns.rawValue == request.workload } }?.key
            throw WeftError(.permissionDenied, elsewhere.map { "workload \(request.workload) is attached to node \($0), not to \(node)" }
                            ?? "node \(node) has not registered a workload \(request.workload)")
        }
        let id = try SpiffeID.workload(trustDomain: trustDomain, namespace: spec.namespace.rawValue,
                                       serviceAccount: spec.serviceAccount ?? spec.service.rawValue)
        let issued = try ca.sign(csrPEM: request.csrPEM, as: id, lifetime: workloadCertificateLifetime, now: now)
        logger.info("workload certificate issued", metadata: ["node": "\(node)", "workload": "\(request.workload)",
                                                             "identity": "\(id)", "serial": "\(issued.serial)"])
        return SignReply(certificate: issued, bundlePEM: ca.bundlePEM)
    }

    public func createToken(ttl: TimeInterval) async throws -> JoinTokenReply {
        var next = tokens
        let (token, expires) = try next.create(ttl: ttl)
        try next.save(to: stateDirectory + "/tokens.json")
        if let mirror {
            do {
                guard let rev = try await mirror.commit(["tokens.json"], compare: "tokens.json", expected: tokensRevision, from: stateDirectory) else {
                    await refresh()
                    throw WeftError(.alreadyExists, "another control plane changed the tokens at the same moment; nothing was created",
                                    hint: "run the command again")
                }
                tokensRevision = rev
            } catch {
                try? tokens.save(to: stateDirectory + "/tokens.json")
                if let e = error as? WeftError, e.code == .alreadyExists { throw e }
                throw WeftError(.agentUnavailable, "no token created: \(error)")
            }
        }
        tokens = next
        logger.info("join token created", metadata: ["expires": "\(expires)"])
        return JoinTokenReply(token: token, expires: expires, caPin: caPin)
    }

    // MARK: - config

    public var snapshot: ConfigSnapshot {
        ConfigSnapshot(version: store.version, documents: store.documents, store: storeID, nodes: registry)
    }

    /// Snapshots must reach agents in one gRPC message: the config may use at most this much
    /// of it (the rest is left to the registry).
    public let maxConfigBytes: Int

    public func applyConfig(_ files: [ConfigFile]) async -> ConfigReply {
        var candidate = store
        var reply = candidate.apply(files)
        guard !reply.rejected else { return reply }
        let size = (try? JSONEncoder().encode(candidate.documents).count) ?? Int.max
        guard size <= maxConfigBytes else {
            reply.rejected = true
            reply.changes = []
            reply.version = store.version
            reply.diagnostics.append("error: the config would be \(size / 1024) KiB, more than the \(maxConfigBytes / 1024) KiB a snapshot may carry to agents; nothing was applied")
            return reply
        }
        return await commit(reply, candidate: candidate)
    }

    public func deleteConfig(_ files: [ConfigFile]) async -> ConfigReply {
        var candidate = store
        let reply = candidate.delete(files)
        return await commit(reply, candidate: candidate)
    }

    public func currentConfig() -> ConfigReply {
        var reply = ConfigReply()
        reply.documents = store.documents
        reply.version = store.version
        return reply
    }

    /// Makes `candidate` the config: persisted (state directory, then etcd when the store is
    /// there; if etcd refuses, nothing changes) and published.
    private func commit(_ reply: ConfigReply, candidate: ConfigStore) async -> ConfigReply {
        guard !reply.rejected, reply.changes.contains(where: { !$0.hasSuffix("unchanged") && !$0.hasSuffix("not found") }) else { return reply }
        let previous = store
        store = candidate
        do {
            try store.save(to: stateDirectory)
            try SecretFile.write("\(store.version)\n", to: stateDirectory + "/config-version.json")
            if let mirror {
                guard let rev = try await mirror.commit(["config.yaml", "config-version.json"], compare: "config-version.json",
                                                        expected: configRevision, from: stateDirectory) else {
                    throw WeftError(.alreadyExists, "another control plane changed the config at the same moment; apply again")
                }
                configRevision = rev
            }
        } catch {
            store = previous
            try? store.save(to: stateDirectory)
            try? SecretFile.write("\(store.version)\n", to: stateDirectory + "/config-version.json")
            var refused = reply
            refused.rejected = true
            refused.changes = []
            refused.version = store.version
            refused.diagnostics.append("error: the config store did not take the change, nothing was applied: \(error)")
            logger.error("config change refused: the store did not take it: \(error)")
            if (error as? WeftError)?.code == .alreadyExists { await refresh() }
            return refused
        }
        publish()
        logger.info("config version \(store.version) published", metadata: ["subscribers": "\(subscribers.count)"])
        return reply
    }

    /// With the store in etcd: takes in what another control plane changed there (config,
    /// tokens, registry) and publishes it to this one's agents. Called every 250 ms.
    public func refresh() async {
        guard let mirror else { return }
        do {
            let configRev = try await mirror.revision(of: "config-version.json")
            var changed = false
            if configRev != configRevision {
                try await mirror.fetch(["config-version.json", "config.yaml"], into: stateDirectory)
                if let saved = ConfigStore.load(from: stateDirectory) {
                    let version = (FileManager.default.contents(atPath: stateDirectory + "/config-version.json"))
                        .flatMap { String(decoding: $0, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines) }.flatMap(Int.init) ?? store.version
                    let documents = saved.content.components(separatedBy: "---\n").filter { !$0.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty }
                    var candidate = ConfigStore()
                    let reply = candidate.replaceAll(documents: documents, version: version)
                    if reply.rejected {
                        logger.error("config version \(version) in etcd does not validate here; keeping version \(store.version)",
                                     metadata: ["why": "\(reply.diagnostics.joined(separator: "; "))"])
                    } else {
                        store = candidate
                        changed = true
                        logger.info("config version \(version) taken from etcd (changed through another control plane)")
                    }
                }
                configRevision = configRev
            }
            let tokensRev = try await mirror.revision(of: "tokens.json")
            if tokensRev != tokensRevision {
                try await mirror.fetch(["tokens.json"], into: stateDirectory)
                tokens = try JoinTokens.load(from: stateDirectory + "/tokens.json")
                tokensRevision = tokensRev
            }
            var fromEtcd: [String: NodeWorkloads] = [:]
            for n in try await mirror.nodes() { fromEtcd[n.node] = n }
            for (node, n) in fromEtcd where workloads[node] != n.workloads || routes[node] != n.route {
                workloads[node] = n.workloads
                routes[node] = n.route
                changed = true
            }
            if changed { publish() }
        } catch {
            if !refreshFailing { logger.error("cannot read the store in etcd: \(error)") }
            refreshFailing = true
            return
        }
        if refreshFailing { logger.notice("the store in etcd is reachable again") }
        refreshFailing = false
    }

    private var refreshFailing = false

    /// The revisions the state directory was filled with (right after start).
    public func takeStoreRevisions() async throws {
        guard let mirror else { return }
        configRevision = try await mirror.revision(of: "config-version.json")
        tokensRevision = try await mirror.revision(of: "tokens.json")
        for n in try await mirror.nodes() where workloads[n.node] == nil {
            workloads[n.node] = n.workloads
            routes[n.node] = n.route
        }
    }

    private func publish() {
        let snapshot = self.snapshot
        for (_, s) in subscribers { s.continuation.yield(snapshot) }
    }

    // MARK: - subscriptions

    /// Opens a subscription for `node`: the current snapshot at once, then every new one.
    public func subscribe(node: String, address: String?, now: Date = Date()) -> (UUID, AsyncStream<ConfigSnapshot>) {
        let id = UUID()
        let (stream, continuation) = AsyncStream.makeStream(of: ConfigSnapshot.self, bufferingPolicy: .bufferingNewest(1))
        continuation.yield(snapshot)
        subscribers[id] = (node, continuation)
        var agent = agents[node] ?? Agent(node: node, identity: (try? Self.nodeIdentity(trustDomain: trustDomain, node: node).description) ?? node,
                                          lastSeen: now)
        agent.address = address ?? agent.address
        agent.lastSeen = now
        agents[node] = agent
        logger.info("agent subscribed", metadata: ["node": "\(node)", "address": "\(address ?? "?")"])
        return (id, stream)
    }

    public func unsubscribe(_ id: UUID, now: Date = Date()) {
        guard let s = subscribers.removeValue(forKey: id) else { return }
        s.continuation.finish()
        agents[s.node]?.lastSeen = now
        saveAgents()
        logger.info("agent disconnected", metadata: ["node": "\(s.node)"])
    }

    public func received(_ message: AgentMessage, from node: String, now: Date = Date()) {
        guard var agent = agents[node] else { return }
        agent.lastSeen = now
        if let hello = message.hello { agent.agentVersion = hello.agentVersion }
        if let ack = message.ack {
            agent.ackedVersion = ack
            if let nacked = agent.nackedVersion, nacked <= ack {
                agent.nackedVersion = nil
                agent.nackReason = nil
            }
        }
        if let nack = message.nack {
            agent.nackedVersion = nack
            agent.nackReason = message.reason
            logger.warning("agent refused config version \(nack)", metadata: ["node": "\(node)", "reason": "\(message.reason ?? "?")"])
        }
        agents[node] = agent
        saveAgents()
    }

    public func agentStatuses() -> [AgentSyncStatus] {
        let connected = Set(subscribers.values.map(\.node))
        return agents.values.sorted { $0.node < $1.node }.map {
            AgentSyncStatus(node: $0.node, identity: $0.identity, connected: connected.contains($0.node), address: $0.address,
                            lastSeen: $0.lastSeen, agentVersion: $0.agentVersion, ackedVersion: $0.ackedVersion,
                            nackedVersion: $0.nackedVersion, nackReason: $0.nackReason, currentVersion: store.version)
        }
    }

    public func shutdown() {
        for (_, s) in subscribers { s.continuation.finish() }
        subscribers.removeAll()
        flushAgents()
    }

    /// Agent records are soft state (they are rebuilt as agents reconnect): written at most
    /// once a second, not once per ACK (a config change to 1,000 agents is 1,000 ACKs).
    private var flushScheduled = false

    private func saveAgents() {
        guard !flushScheduled else { return }
        flushScheduled = true
        Task {
            try? await Task.sleep(for: .seconds(1))
            if self.flushScheduled { self.flushAgents() }  // not already flushed by shutdown()
        }
    }

    private func flushAgents() {
        flushScheduled = false
        do {
            try SecretFile.write(String(decoding: try JSONEncoder.iso.encode(registry), as: UTF8.self), to: stateDirectory + "/workloads.json")
            if let mirror {
                let dir = stateDirectory, logger = self.logger
                Task {
                    do { try await mirror.store(["workloads.json"], from: dir) } catch {
                        logger.error("cannot keep the registry in etcd: \(error)")
                    }
                }
            }
            let list = agents.values.sorted { $0.node < $1.node }
            try SecretFile.write(String(decoding: try JSONEncoder.iso.encode(list), as: UTF8.self), to: stateDirectory + "/agents.json")
        } catch {
            logger.error("cannot persist agents: \(error)")
        }
    }
}
