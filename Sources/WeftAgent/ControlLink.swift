import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2Posix
import Logging
import WeftControl
import WeftCore
import WeftIdentity
import WeftProxy
import X509

/// The agent's side of the control plane: joins once (token + CA pin), then keeps one
/// subscription open, applying each config snapshot all-or-nothing and answering ACK or
/// NACK. While the control plane is unreachable the agent keeps serving its last good
/// config (persisted, so a restart comes back to it too) and retries with backoff + jitter;
/// `weft get config` and the agent's ping say so.
///
/// Node credentials live in `<state>/node/` (key 0600, directory 0700): the node key never
/// leaves the agent; the certificate is renewed at half life over the same connection.
public actor ControlLink: RateLimitCoordinator {
    let settings: ControlLinkConfiguration
    let stateDirectory: String
    let logger: Logger
    private var status: ControlLinkStatus
    private var credentials: NodeCredentials?
    private var followed: FollowedStore?

    struct NodeCredentials {
        var key: WorkloadKey
        var keyPEM: String
        var chainPEM: [String]
        var bundlePEM: String
        var roots: [Certificate]
        var notBefore: Date
        var notAfter: Date

        var renewAt: Date { notBefore.addingTimeInterval(notAfter.timeIntervalSince(notBefore) / 2) }
    }

    /// Which control plane store (and version) this agent's config came from.
    struct FollowedStore: Codable {
        var store: String
        var version: Int
    }

    /// How other hosts reach this node's pods (registered with the workloads).
    let route: NodeRoute?

    public init(settings: ControlLinkConfiguration, stateDirectory: String, podCIDR: CIDR, logger: Logger) {
        self.settings = settings
        route = settings.nodeAddress.map { NodeRoute(address: $0, podCIDR: podCIDR) }
        self.stateDirectory = stateDirectory
        self.logger = logger
        status = ControlLinkStatus(address: settings.address, node: settings.node, connected: false, appliedVersion: nil,
                                  lastError: nil, since: Date())
        followed = (FileManager.default.contents(atPath: stateDirectory + "/node/followed.json"))
            .flatMap { try? JSONDecoder().decode(FollowedStore.self, from: $0) }
        status.appliedVersion = followed?.version
    }

    private var nodeDirectory: String { stateDirectory + "/node" }
    /// Which control plane is in use (`--control a,b`: another is tried after a failure).
    private var current = 0
    private var client: ControlClient {
        let e = settings.endpoints[current % settings.endpoints.count]
        return ControlClient(host: e.host, port: e.port, logger: logger)
    }
    public var currentStatus: ControlLinkStatus { status }

    /// The roots the control plane's CA makes workloads trust (refreshed with each certificate).
    public private(set) var bundlePEM = ""

    /// The trust domain of the mesh this node joined.
    public func meshTrustDomain() throws -> String {
        guard let credentials else { throw WeftError(.system, "not joined") }
        return try trustDomain(credentials)
    }

    // MARK: - workloads

    /// Tells the control plane every workload now attached here (the only ones it will sign
    /// certificates for).
    public func register(_ specs: [WorkloadSpec]) async throws {
        guard let creds = credentials else { throw WeftError(.system, "not joined") }
        let _: RegisterReply = try await client.unary(ControlAPI.register, RegisterRequest(workloads: specs, route: route), chain: creds.chainPEM,
                                                      keyPEM: creds.keyPEM, trust: .init(roots: creds.roots, trustDomain: try trustDomain(creds)))
    }

    /// A workload certificate from the control plane's CA.
    public func sign(workload: String, csrPEM: String) async throws -> SignReply {
        guard let creds = credentials else { throw WeftError(.system, "not joined") }
        do {
            let reply: SignReply = try await client.unary(ControlAPI.sign, SignRequest(workload: workload, csrPEM: csrPEM), chain: creds.chainPEM,
                                                          keyPEM: creds.keyPEM, trust: .init(roots: creds.roots, trustDomain: try trustDomain(creds)))
            bundlePEM = reply.bundlePEM
            return reply
        } catch let error as WeftError where error.code == .agentUnavailable {
            throw WeftError(.agentUnavailable, "no certificate for workload \(workload): \(error.message)",
                            hint: "workload certificates come from the control plane at \(settings.address); it must be reachable to attach or renew")
        }
    }
    /// The version of the config restored from the state directory, if it came from here.
    public var restoredVersion: Int? { followed?.version }

    // MARK: - joining

    /// Loads the node credentials, or joins with the token to get them. Throws only what
    /// the operator must fix (no token and no credentials, a pin mismatch, a refused token).
    public func bootstrap() async throws {
        if let stored = try loadCredentials() {
            credentials = stored
            bundlePEM = stored.bundlePEM
            return
        }
        guard let token = settings.token, let pin = settings.caPin else {
            throw WeftError(.invalidArgument, "this node has not joined the control plane at \(settings.address) yet",
                            hint: "pass --token and --ca-pin (from `weft control token create` on the control plane's host)")
        }
        let key = WorkloadKey()
        var joined: JoinReply?
        var lastError: Error?
        for index in settings.endpoints.indices where joined == nil {
            current = index
            do {
                joined = try await client.join(node: settings.node, token: token, pin: pin, key: key).1
            } catch let error as WeftError where error.code == .agentUnavailable {
                lastError = error  // unreachable: the next control plane
            }
        }
        guard let reply = joined else { throw lastError ?? WeftError(.agentUnavailable, "no control plane reachable at \(settings.address)") }
        let stored = try save(key: key, keyPEM: try key.privateKeyPEM(), reply: reply)
        credentials = stored
        bundlePEM = reply.bundlePEM
        logger.info("joined the control plane", metadata: ["control": "\(settings.address)", "node": "\(settings.node)",
                                                           "identity": "\(reply.identity)", "notAfter": "\(stored.notAfter)"])
    }

    private func loadCredentials() throws -> NodeCredentials? {
        let dir = nodeDirectory
        guard let keyPEM = try? String(contentsOfFile: dir + "/key.pem", encoding: .utf8),
              let chainText = try? String(contentsOfFile: dir + "/chain.pem", encoding: .utf8),
              let bundlePEM = try? String(contentsOfFile: dir + "/bundle.pem", encoding: .utf8) else { return nil }
        try SecretFile.checkPrivate(dir + "/key.pem")
        let chain = try PEMFiles.certificates(pem: chainText, what: dir + "/chain.pem")
        let roots = try PEMFiles.certificates(pem: bundlePEM, what: dir + "/bundle.pem")
        let key = try WorkloadKey(pem: keyPEM)
        guard key.matches(try chain[0].serializeAsPEM().pemString) else {
            throw WeftError(.invalidArgument, "\(dir)/chain.pem is not the certificate of \(dir)/key.pem", hint: "move \(dir) away and join again")
        }
        if chain[0].notValidAfter < Date() {
            guard settings.token != nil, settings.caPin != nil else {
                throw WeftError(.permissionDenied, "this node's certificate expired at \(chain[0].notValidAfter)",
                                hint: "join again: pass a fresh --token and --ca-pin")
            }
            logger.notice("node certificate expired at \(chain[0].notValidAfter); joining again with the token")
            return nil
        }
        return NodeCredentials(key: key, keyPEM: keyPEM, chainPEM: try chain.map { try $0.serializeAsPEM().pemString },
                               bundlePEM: bundlePEM, roots: roots, notBefore: chain[0].notValidBefore, notAfter: chain[0].notValidAfter)
    }

    private func save(key: WorkloadKey, keyPEM: String, reply: JoinReply) throws -> NodeCredentials {
        let chain = try PEMFiles.certificates(pem: reply.chainPEM.joined(separator: "\n"), what: "the node certificate")
        let roots = try PEMFiles.certificates(pem: reply.bundlePEM, what: "the trust bundle")
        try SecretFile.makeDirectory(nodeDirectory)
        try SecretFile.write(keyPEM, to: nodeDirectory + "/key.pem")
        try SecretFile.write(reply.chainPEM.joined(separator: "\n"), to: nodeDirectory + "/chain.pem", mode: 0o644)
        try SecretFile.write(reply.bundlePEM, to: nodeDirectory + "/bundle.pem", mode: 0o644)
        return NodeCredentials(key: key, keyPEM: keyPEM, chainPEM: reply.chainPEM, bundlePEM: reply.bundlePEM, roots: roots,
                               notBefore: chain[0].notValidBefore, notAfter: chain[0].notValidAfter)
    }

    /// A fresh node certificate for a fresh key, asked for with the current one.
    private func renewIfDue(now: Date = Date()) async {
        guard let current = credentials, now >= current.renewAt else { return }
        do {
            let key = WorkloadKey()
            let keyPEM = try key.privateKeyPEM()
            let id = try ControlPlane.nodeIdentity(trustDomain: trustDomain(current), node: settings.node)
            let reply: JoinReply = try await client.unary(ControlAPI.join, JoinRequest(token: "", node: settings.node, csrPEM: try key.csrPEM(for: id)),
                                                          chain: current.chainPEM, keyPEM: current.keyPEM,
                                                          trust: .init(roots: current.roots, trustDomain: id.trustDomain))
            credentials = try save(key: key, keyPEM: keyPEM, reply: reply)
            logger.info("node certificate renewed", metadata: ["notAfter": "\(credentials!.notAfter)"])
        } catch {
            logger.warning("cannot renew the node certificate (expires \(current.notAfter)): \(error)")
        }
    }

    private func trustDomain(_ c: NodeCredentials) throws -> String {
        guard let leaf = try? PEMFiles.certificates(pem: c.chainPEM[0], what: "node certificate").first else {
            throw WeftError(.system, "unreadable node certificate")
        }
        return try SVID.identity(of: leaf).trustDomain
    }

    // MARK: - following the config

    /// Runs until cancelled: subscribe, apply, ACK/NACK; on any failure wait (backoff with
    /// jitter) and subscribe again.
    public func run(registry: WorkloadRegistry) async {
        let backoff = Backoff()
        var attempt = 0
        while !Task.isCancelled {
            await renewIfDue()
            let started = Date()
            do {
                try await follow(registry: registry)
                setDisconnected("the control plane ended the subscription")
            } catch is CancellationError {
                break
            } catch {
                setDisconnected(ControlClient.describe(error))
            }
            // With several control planes, the next one is tried at once.
            if settings.endpoints.count > 1 {
                current = (current + 1) % settings.endpoints.count
                if Date().timeIntervalSince(started) > 1 || current != 0 { continue }
            }
            // A subscription that lasted a while resets the backoff.
            attempt = Date().timeIntervalSince(started) > 30 ? 0 : attempt + 1
            let delay = backoff.delay(attempt: attempt)
            logger.notice("control plane at \(settings.address) unreachable; config stays at version \(status.appliedVersion.map(String.init) ?? "none"); retrying in \(delay)",
                          metadata: ["reason": "\(status.lastError ?? "?")"])
            try? await Task.sleep(for: delay)
        }
    }

    private func setDisconnected(_ reason: String) {
        if status.connected { status.since = Date() }
        status.connected = false
        status.lastError = reason
    }

    private func follow(registry: WorkloadRegistry) async throws {
        guard let creds = credentials else { throw WeftError(.system, "not joined") }
        // The control plane may have restarted (or never heard of this node's workloads).
        try await register(await registry.specs())
        let (outbound, continuation) = AsyncStream.makeStream(of: AgentMessage.self)
        defer { continuation.finish() }
        continuation.yield(AgentMessage(hello: .init(agentVersion: WeftVersion.current, appliedVersion: status.appliedVersion ?? 0)))
        let request = StreamingClientRequest<AgentMessage> { writer in
            for await message in outbound { try await writer.write(message) }
        }
        let trust = ControlClient.Trust(roots: creds.roots, trustDomain: try trustDomain(creds))
        try await client.withClient(chain: creds.chainPEM, keyPEM: creds.keyPEM, trust: trust) { client in
            let generation = await self.setActive(client)
            defer { Task { await self.clearActive(generation) } }
            try await client.bidirectionalStreaming(request: request, descriptor: ControlAPI.subscribe, serializer: JSONCoder<AgentMessage>(),
                                                    deserializer: JSONCoder<ConfigSnapshot>(), options: ControlClient.callOptions) { response in
                for try await snapshot in response.messages {
                    await self.markConnected()
                    continuation.yield(await self.handle(snapshot, registry: registry))
                }
            }
        }
    }

    /// The connection of the current subscription, shared by global rate-limit leases.
    private var active: GRPCClient<HTTP2ClientTransport.Posix>?
    private var activeGeneration = 0

    private func setActive(_ client: GRPCClient<HTTP2ClientTransport.Posix>) -> Int {
        active = client
        activeGeneration += 1
        return activeGeneration
    }

    /// The subscription `generation` ended (a newer one may already be in place).
    private func clearActive(_ generation: Int) {
        if generation == activeGeneration { active = nil }
    }

    /// Leases of global rate limits, over the subscription's connection (a lease that takes
    /// longer than half a second is a failure: the agent then decides locally).
    public func acquire(_ requests: [TokenLeaseRequest]) async throws -> [TokenLeaseGrant] {
        guard let active, status.connected else {
            throw WeftError(.agentUnavailable, "not connected to the control plane at \(settings.address)")
        }
        var options = ControlClient.callOptions
        options.timeout = .milliseconds(500)
        let reply = try await active.unary(request: ClientRequest(message: AcquireRequest(leases: requests)), descriptor: ControlAPI.acquire,
                                           serializer: JSONCoder<AcquireRequest>(), deserializer: JSONCoder<AcquireReply>(),
                                           options: options) { try $0.message }
        return reply.grants
    }

    private func markConnected() {
        let e = settings.endpoints[current % settings.endpoints.count]
        status.address = e.host.contains(":") ? "[\(e.host)]:\(e.port)" : "\(e.host):\(e.port)"
        if !status.connected {
            status.connected = true
            status.since = Date()
            status.lastError = nil
            logger.info("following the control plane", metadata: ["control": "\(settings.address)"])
        }
    }

    /// The other nodes' part of the registry, as last received (kept for restarts).
    public var savedRegistry: [NodeWorkloads] {
        (FileManager.default.contents(atPath: nodeDirectory + "/registry.json"))
            .flatMap { try? JSONDecoder().decode([NodeWorkloads].self, from: $0) } ?? []
    }

    /// Applies one snapshot (or refuses it) and says which.
    func handle(_ snapshot: ConfigSnapshot, registry: WorkloadRegistry) async -> AgentMessage {
        if let nodes = snapshot.nodes {
            let others = nodes.filter { $0.node != settings.node }
            await registry.applyRemote(others)
            do {
                try SecretFile.makeDirectory(nodeDirectory)
                try SecretFile.write(String(decoding: try JSONEncoder().encode(others), as: UTF8.self), to: nodeDirectory + "/registry.json")
            } catch {
                logger.error("cannot keep the mesh registry in \(nodeDirectory): \(error)")
            }
        }
        if case .refuse(let reason) = SnapshotPolicy.decide(followedStore: followed?.store, currentResources: await registry.configResourceCount,
                                                            snapshot: snapshot) {
            logger.warning("refused config version \(snapshot.version): \(reason)")
            return AgentMessage(nack: snapshot.version, reason: reason)
        }
        if let followed, followed.store == snapshot.store, followed.version == snapshot.version {
            return AgentMessage(ack: snapshot.version)  // already in force (a reconnect)
        }
        let reply = await registry.applySnapshot(documents: snapshot.documents, version: snapshot.version)
        guard !reply.rejected else {
            let reason = reply.diagnostics.joined(separator: "; ")
            logger.warning("refused config version \(snapshot.version); keeping version \(status.appliedVersion.map(String.init) ?? "none")",
                           metadata: ["reason": "\(reason)"])
            return AgentMessage(nack: snapshot.version, reason: reason.isEmpty ? "rejected" : reason)
        }
        let record = FollowedStore(store: snapshot.store, version: snapshot.version)
        do {
            try SecretFile.makeDirectory(nodeDirectory)
            try SecretFile.write(String(decoding: try JSONEncoder().encode(record), as: UTF8.self), to: nodeDirectory + "/followed.json", mode: 0o644)
        } catch {
            logger.error("cannot record the applied config version: \(error)")
        }
        followed = record
        status.appliedVersion = snapshot.version
        return AgentMessage(ack: snapshot.version)
    }
}
