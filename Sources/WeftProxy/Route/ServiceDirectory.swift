import NIOCore
import Synchronization
import WeftConfig
import WeftCore
import WeftIdentity

/// The catalog as the data path reads it: one immutable snapshot, swapped whole by the agent
/// (never a half-updated view), plus a round-robin position per service. Shared by every
/// workload loop of the agent; one short lock per new connection.
public final class ServiceDirectory: Sendable {
    private struct State {
        var catalog: ServiceCatalog?
        var routes = RouteTable()
        var cursors: [Cursor: Int] = [:]
        /// Requests in flight per endpoint address (LEAST_REQUEST's signal).
        var inflight: [String: Int] = [:]
        /// Workloads whose own retries were recently spent (uptime nanoseconds).
        var exhaustedAt: [String: UInt64] = [:]
        var outliers = OutlierDetector()
        var rateLimiter = RateLimiter()
        /// host → endpoints (workload names) failing their active health check.
        var unhealthy: [String: Set<String>] = [:]
        var breakers: [String: CircuitBreaker] = [:]
    }

    public func retryBudgetPolicy(host: String) -> RetryBudgetPolicy? {
        state.withLock { $0.routes.retryBudget(host: host) }
    }

    /// The host's circuit breaker, if it has one: may this request go?
    public func breakerAdmit(host: String, now: UInt64) -> CircuitBreaker.Admission {
        guard hasOutcomeTracking.load(ordering: .relaxed) else { return .allow }
        return state.withLock { state in
            guard let policy = state.routes.breakers[host] else { return .allow }
            return state.breakers[host, default: CircuitBreaker()].admit(policy, now: now)
        }
    }

    /// The breaker state of `host` ("closed" when it has none).
    public func breakerPhase(host: String) -> String? {
        state.withLock { state in
            guard state.routes.breakers[host] != nil else { return nil }
            return (state.breakers[host] ?? CircuitBreaker()).phase.rawValue
        }
    }

    /// One service to probe: its HealthCheck and its endpoints' addresses.
    public struct HealthTarget: Sendable {
        public let host: String
        public let check: HealthCheck
        public let endpoints: [(workload: String, address: OriginalDestination)]
    }

    /// Services with a HealthCheck, and where their endpoints listen.
    public func healthTargets() -> [HealthTarget] {
        state.withLock { state in
            state.routes.healthChecks.compactMap { host, check in
                guard let entry = state.catalog?.service(fqdn: host) else { return nil }
                let endpoints = entry.endpoints.map { e -> (workload: String, address: OriginalDestination) in
                    let port = check.port ?? e.ports.first?.targetPort ?? entry.ports.first?.targetPort ?? 80
                    return (e.workload, OriginalDestination(ip: e.ip, port: port))
                }
                return HealthTarget(host: host, check: check, endpoints: endpoints)
            }
        }
    }

    /// The health checker's verdict on one endpoint.
    public func setHealth(host: String, workload: String, healthy: Bool) {
        state.withLock { state in
            if healthy { state.unhealthy[host]?.remove(workload) } else { state.unhealthy[host, default: []].insert(workload) }
            if state.unhealthy[host]?.isEmpty ?? false { state.unhealthy[host] = nil }
        }
    }

    public func unhealthy(host: String) -> [String] {
        state.withLock { ($0.unhealthy[host] ?? []).sorted() }
    }

    /// The rate limits (RateLimitPolicy) of `host` for one request: the verdict of the local
    /// buckets, and the mesh-wide limits still to be taken from the coordinator (see
    /// `globalLimits`; empty without one).
    public func checkRateLimits(host: String, facts: RequestFacts, client: IPAddress?, now: UInt64) -> (RateVerdict, [GlobalLimit]) {
        guard hasRateLimits.load(ordering: .relaxed) else { return (.allow, []) }
        let coordinated = globalLimits.isCoordinated
        return state.withLock { state in
            let policies = state.routes.rateLimitPolicies(host: host)
            guard !policies.isEmpty else { return (.allow, []) }
            let verdict = state.rateLimiter.check(policies, facts: facts, client: client, now: now, coordinated: coordinated)
            guard verdict == .allow, coordinated else { return (verdict, []) }
            return (verdict, RateLimiter.globalLimits(policies, facts: facts, client: client))
        }
    }

    /// Leases of the mesh-wide buckets of `mode: global` rate limits.
    public let globalLimits = GlobalRateLimiter()

    /// An answer from the endpoint a lease was taken for (`status` nil: connect failure or
    /// reset), for outlier detection when the host's DestinationRule asks for it.
    public func recordOutcome(_ lease: EndpointLease, status: Int?, probe: Bool = false, now: UInt64) {
        guard hasOutcomeTracking.load(ordering: .relaxed) else { return }
        state.withLock { state in
            if let breaker = state.routes.breakers[lease.host] {
                state.breakers[lease.host, default: CircuitBreaker()].record(failed: (status ?? 500) >= 500, probe: probe, breaker, now: now)
            }
            guard let policy = state.routes.outlierDetection(host: lease.host, subset: lease.subset) else { return }
            let count = lease.subsetSize ?? state.catalog?.service(fqdn: lease.host)?.endpoints.count ?? 1
            state.outliers.record(host: lease.host, endpoint: lease.workload, status: status, policy: policy,
                                  endpointCount: count, now: now)
        }
    }

    /// Endpoints of `host` currently ejected by outlier detection.
    public func ejected(host: String, now: UInt64) -> [String] {
        state.withLock { $0.outliers.ejected(host: host, now: now) }
    }

    /// How long a workload counts as "failing because its dependencies fail" after its own
    /// retries were spent.
    static let exhaustionMemory: UInt64 = 2_000_000_000

    /// A workload's outbound proxy gave up retrying (attempts used up, budget spent, or
    /// suppressed itself): its own failures for a while are consequences, not causes.
    public func noteRetriesExhausted(workload: String, now: UInt64) {
        state.withLock { $0.exhaustedAt[workload] = now }
    }

    /// Whether `workload` recently gave up retrying its own upstreams. Its callers then do
    /// not retry its errors: across a chain of unmodified apps (which do not pass response
    /// headers on) only the hop next to the failure retries, within its budget, instead of
    /// every hop multiplying the load. Node-local: every hop's proxy lives in this agent.
    public func recentlyExhausted(workload: String, now: UInt64) -> Bool {
        state.withLock { state in
            guard let at = state.exhaustedAt[workload] else { return false }
            if now &- at > Self.exhaustionMemory {
                state.exhaustedAt[workload] = nil
                return false
            }
            return true
        }
    }

    /// Returned exactly once when the request it was taken for ends.
    public func release(_ lease: EndpointLease) {
        state.withLock { state in
            let n = (state.inflight[lease.workload] ?? 1) - 1
            state.inflight[lease.workload] = n > 0 ? n : nil
        }
    }

    /// Round-robin and split positions; a small key, built without string formatting on
    /// every request.
    private enum Cursor: Hashable {
        case connections(ServiceKey)
        case requests(ServiceKey, subset: String?)
        case split(ServiceKey)
    }

    private let state = Mutex(State())
    /// Whether the published config has any rate limit, breaker or outlier detection: when
    /// not (the common case), the per-request checks return without taking the lock.
    private let hasRateLimits = Atomic<Bool>(false)
    private let hasOutcomeTracking = Atomic<Bool>(false)

    public init() {}

    /// A meshed workload as its callers see it: the identity it must prove on the tunnel,
    /// and what its PeerAuthentication is looked up by.
    public struct Peer: Sendable {
        public let identity: SpiffeID
        public let namespace: String
        public let labels: [String: String]
        /// Its workload name and service (for metrics).
        public let workload: String
        public let service: String

        public init(identity: SpiffeID, namespace: String, labels: [String: String], workload: String = "unknown", service: String = "unknown") {
            self.identity = identity
            self.namespace = namespace
            self.labels = labels
            self.workload = workload
            self.service = service
        }
    }

    private let peers = Mutex<[IPAddress: Peer]>([:])

    /// Requests in flight per endpoint (workload name), over every workload proxy.
    public func inflightRequests() -> [String: Int] { state.withLock { $0.inflight } }

    /// The meshed workload at `ip`, if any.
    public func peer(at ip: IPAddress) -> Peer? { peers.withLock { $0[ip] } }

    /// Bumped by every publish: what was derived from the directory before is stale.
    public var generation: Int { publishes.load(ordering: .relaxed) }
    private let publishes = Atomic<Int>(0)

    public func publish(peers map: [IPAddress: Peer]) {
        peers.withLock { $0 = map }
        publishes.add(1, ordering: .relaxed)
    }

    /// The identity to expect when tunnelling to `target`, or nil when it is not a meshed
    /// workload or its PeerAuthentication disables mTLS on that port (plain TCP then).
    public func tunnelPeer(_ target: OriginalDestination) -> SpiffeID? {
        guard let peer = peers.withLock({ $0[target.ip] }) else { return nil }
        let mode = state.withLock { $0.routes.mtlsMode(namespace: peer.namespace, labels: peer.labels, port: target.port) }
        return mode == .DISABLE ? nil : peer.identity
    }

    /// The AuthorizationPolicies in force for a workload (empty: everything allowed).
    public func authorizationPolicies(namespace: String, labels: [String: String]) -> [AuthorizationPolicy] {
        state.withLock { $0.routes.authorizationPolicies(namespace: namespace, labels: labels) }
    }

    /// The mode a workload applies to plaintext on one of its ports.
    public func mtlsMode(namespace: String, labels: [String: String], port: UInt16) -> PeerAuthenticationPolicy.Mode {
        state.withLock { $0.routes.mtlsMode(namespace: namespace, labels: labels, port: port) }
    }

    public func publish(_ catalog: ServiceCatalog) {
        state.withLock { $0.catalog = catalog }
    }

    public func publish(routes: RouteTable) {
        state.withLock { $0.routes = routes }
        publishes.add(1, ordering: .relaxed)
        hasRateLimits.store(routes.hasRateLimits, ordering: .relaxed)
        hasOutcomeTracking.store(routes.tracksOutcomes, ordering: .relaxed)
    }

    /// Where one HTTP request goes: the VirtualService for the dialled service (if any)
    /// chooses a destination and subset, then round robin among that subset's endpoints.
    public func route(_ original: OriginalDestination, facts: RequestFacts) -> HTTPResolution {
        state.withLock { state in
            guard let catalog = state.catalog, let entry = catalog.service(forVIP: original.ip) else { return .passthrough }
            // Weighted splits draw from a golden-ratio (Weyl) sequence per host instead of
            // independent random numbers: the same proportions, but 2,000 requests of a 90/10
            // split land within a fraction of a point of 90/10, not ±2 points of noise.
            let n = state.cursors[.split(entry.key), default: 0]
            state.cursors[.split(entry.key)] = n &+ 1
            let draw = (Double(n) * 0.618_033_988_749_894_9).truncatingRemainder(dividingBy: 1)
            switch state.routes.decide(host: entry.key.fqdn, facts: facts, random: draw) {
            case .defaultRoute:
                return Self.pick(entry, port: original.port, family: original.ip.family, labels: nil,
                                 cursorKey: .requests(entry.key, subset: nil),
                                 route: nil, policy: state.routes.loadBalancer(host: entry.key.fqdn, subset: nil), facts: facts,
                                 state: &state)
            case .noMatch(let vs):
                return .noRoute("no route of VirtualService \(vs) matches \(facts.method) \(facts.path)")
            case .destination(let routed):
                guard let target = catalog.service(fqdn: routed.host) else {
                    return .noEndpoints("\(routed.host) is not a service of the mesh")
                }
                let key = Cursor.requests(target.key, subset: routed.subset)
                return Self.pick(target, port: routed.port ?? original.port, family: original.ip.family, labels: routed.subsetLabels,
                                 cursorKey: key, route: routed, policy: state.routes.loadBalancer(host: routed.host, subset: routed.subset),
                                 facts: facts, state: &state)
            }
        }
    }

    /// Another endpoint for a retry: the same routed destination (host, subset, port) as
    /// the first attempt — a retry never re-runs the weighted split — preferring an endpoint
    /// other than the one that failed when there is a choice (Istio's previous-hosts rule).
    public func retarget(_ original: OriginalDestination, routed: RoutedDestination?, facts: RequestFacts, avoiding: EndpointLease?) -> HTTPResolution {
        state.withLock { state in
            guard let catalog = state.catalog, let entry = catalog.service(forVIP: original.ip) else { return .passthrough }
            guard let routed else {
                return Self.pick(entry, port: original.port, family: original.ip.family, labels: nil,
                                 cursorKey: .requests(entry.key, subset: nil), route: nil,
                                 policy: state.routes.loadBalancer(host: entry.key.fqdn, subset: nil), facts: facts,
                                 avoid: avoiding?.workload, state: &state)
            }
            guard let target = catalog.service(fqdn: routed.host) else {
                return .noEndpoints("\(routed.host) is not a service of the mesh")
            }
            return Self.pick(target, port: routed.port ?? original.port, family: original.ip.family, labels: routed.subsetLabels,
                             cursorKey: .requests(target.key, subset: routed.subset), route: routed,
                             policy: state.routes.loadBalancer(host: routed.host, subset: routed.subset),
                             facts: facts, avoid: avoiding?.workload, state: &state)
        }
    }

    private static func pick(_ entry: ServiceCatalog.Entry, port: UInt16, family: IPFamily, labels: [String: String]?,
                             cursorKey: Cursor, route: RoutedDestination?, policy: LoadBalancer?, facts: RequestFacts,
                             avoid: String? = nil, state: inout State) -> HTTPResolution {
        let turn = state.cursors[cursorKey, default: 0]
        state.cursors[cursorKey] = turn &+ 1
        let matching = labels.map { wanted in entry.endpoints.filter { e in wanted.allSatisfy { e.labels[$0.key] == $0.value } } } ?? entry.endpoints
        var candidates = matching
        let outlier = state.routes.outlierDetection(host: entry.key.fqdn, subset: route?.subset)
        let failingChecks = state.unhealthy[entry.key.fqdn] ?? []
        if outlier != nil || !failingChecks.isEmpty {
            // Out: endpoints ejected by outlier detection and endpoints failing their health check.
            let now = NIODeadline.now().uptimeNanoseconds
            let outliers = state.outliers, host = entry.key.fqdn
            candidates = OutlierDetector.healthy(matching, ejected: {
                failingChecks.contains($0.workload) || (outlier != nil && outliers.isEjected(host: host, endpoint: $0.workload, now: now))
            }, minHealthPercent: outlier?.minHealthPercent ?? 0)
        }
        let inflight = state.inflight
        let index = candidates.isEmpty ? 0 : Balancer.pick(
            policy, endpoints: candidates, turn: turn, hashKey: Balancer.hashKey(policy, facts: facts),
            random: { Int.random(in: 0..<$0) },
            inflight: { e in inflight[e.workload] ?? 0 })
        var chosen = index
        if let avoid, candidates.count > 1, candidates[chosen].workload == avoid { chosen = (chosen + 1) % candidates.count }
        // resolve() picks among the label-matching endpoints: map back from the healthy ones.
        let finalIndex = candidates.isEmpty ? 0 : (matching.firstIndex { $0.workload == candidates[chosen].workload } ?? 0)
        switch entry.resolve(port: port, family: family, labels: labels, pick: { _ in finalIndex }) {
        case .endpoint(let target, let service, let workload):
            state.inflight[workload, default: 0] += 1
            let host = entry.key.fqdn, subset = route?.subset
            var lease = EndpointLease(workload: workload, host: host, limits: state.routes.connectionPool(host: host, subset: subset))
            lease.subset = subset
            lease.subsetSize = subset == nil ? nil : matching.count
            lease.poolKey = state.routes.hasOwnConnectionPool(host: host, subset: subset) ? "\(host)/\(subset ?? "")" : host
            return .endpoint(target, service: service, workload: workload, route: route, lease: lease)
        case .noEndpoints(let service):
            return .noEndpoints(route?.subset.map { "\(service) subset \($0)" } ?? "\(service)")
        case .unknownPort(let service, let port):
            return .unknownPort("service \(service) has no port \(port)")
        case .passthrough:
            return .passthrough
        }
    }

    /// The protocol a service declares for the dialled port: a VIP's service port
    /// (`--port 80:3000/http`), or, dialled straight at a pod address, the target port of the
    /// endpoint's declared ports (so `/tcp` is never sniffed whichever address is used).
    public func portProtocol(_ destination: OriginalDestination) -> PortProtocol? {
        state.withLock { state in
            guard let catalog = state.catalog else { return nil }
            if let entry = catalog.service(forVIP: destination.ip) {
                return entry.ports.first { $0.port == destination.port }?.proto
            }
            for entry in catalog.entries.values {
                for e in entry.endpoints where e.ip == destination.ip || e.ipv6 == destination.ip {
                    if let p = e.ports.first(where: { $0.targetPort == destination.port }) { return p.proto }
                }
            }
            return nil
        }
    }

    /// The MeshConfig in force (nil: defaults, ALLOW_ANY).
    public var meshConfig: MeshConfigPolicy? { state.withLock { $0.routes.meshConfig } }

    /// Whether `ip` is in the mesh registry: a service's virtual IP, a service endpoint, or a
    /// meshed workload's address (on this host or another).
    public func isInRegistry(_ ip: IPAddress) -> Bool {
        if peers.withLock({ $0[ip] != nil }) { return true }
        return state.withLock { state in
            guard let catalog = state.catalog else { return false }
            if catalog.service(forVIP: ip) != nil { return true }
            return catalog.entries.values.contains { $0.endpoints.contains { $0.ip == ip || $0.ipv6 == ip } }
        }
    }

    /// The egress verdict for a new flow (see EgressDecision).
    public func egressVerdict(_ flow: EgressFlow) -> EgressVerdict {
        EgressDecision.decide(flow, policy: meshConfig, inRegistry: isInRegistry(flow.destination))
    }

    /// The virtual IPs of a service, for the DNS proxy.
    public func lookup(name: String, namespace: String) -> (vip: IPAddress, vip6: IPAddress?)? {
        state.withLock { $0.catalog?.service(named: name, namespace: namespace).map { ($0.vip, $0.vip6) } }
    }

    /// Resolves a captured destination: a service VIP becomes one of its endpoints (round
    /// robin per service); anything else passes through.
    public func resolve(_ destination: OriginalDestination) -> ServiceResolution {
        state.withLock { state in
            guard let entry = state.catalog?.service(forVIP: destination.ip) else { return .passthrough }
            let turn = state.cursors[.connections(entry.key), default: 0]
            state.cursors[.connections(entry.key)] = turn &+ 1
            return entry.resolve(port: destination.port, family: destination.ip.family) { count in turn % count }
        }
    }
}

/// The outcome of routing one HTTP request.
/// One request's slot in an endpoint's in-flight count (keyed by workload: the same replica
/// is reached on several addresses and ports).
public struct EndpointLease: Equatable, Sendable {
    let workload: String
    /// The service (fully qualified) the endpoint was picked for.
    let host: String
    /// Its DestinationRule's connectionPool limits, if any (the subset's own when it has them).
    var limits: ConnectionPool? = nil
    /// The subset the route chose, and how many endpoints it has.
    var subset: String? = nil
    var subsetSize: Int? = nil
    /// What the connectionPool limits are counted under: the host, or host/subset for a
    /// subset with limits of its own.
    var poolKey: String = ""

    /// The key of the connectionPool counters.
    var limiterKey: String { poolKey.isEmpty ? host : poolKey }
}

public enum HTTPResolution: Equatable, Sendable {
    case endpoint(OriginalDestination, service: ServiceKey, workload: String, route: RoutedDestination?, lease: EndpointLease)
    case passthrough
    case noRoute(String)
    case noEndpoints(String)
    case unknownPort(String)
}
