import NIOHTTP1
import WeftConfig
import WeftCore

/// The facts of one HTTP request that routes can match on.
public struct RequestFacts: Sendable {
    public var method: String
    public var path: String
    /// Lowercased names (facts made by hand; a request's are looked up in `head`).
    public var headers: [String: String]
    /// The request's own headers, looked up only when a match, hash or limit asks (most
    /// requests never need them: no per-request dictionary of every header).
    var head: HTTPHeaders?
    public var port: UInt16
    /// The calling workload's address (for consistentHash.useSourceIp).
    public var sourceIP: IPAddress?
    /// The calling workload's SPIFFE ID (RateLimitPolicy key sourceIdentity).
    public var sourceIdentity: String?
    /// The name of the VirtualService HTTP route that took the request (once routed).
    public var routeName: String?

    public init(method: String, path: String, headers: [String: String], port: UInt16, sourceIP: IPAddress? = nil) {
        self.method = method
        self.path = path
        self.headers = headers
        self.port = port
        self.sourceIP = sourceIP
    }

    /// A request's facts, its headers kept as they are.
    init(method: String, path: String, head: HTTPHeaders, port: UInt16) {
        self.init(method: method, path: path, headers: [:], port: port)
        self.head = head
    }

    /// The first value of a header (names case-insensitive).
    public func header(_ name: String) -> String? {
        if let head { return head.first(name: name) }
        return headers[name.lowercased()]
    }
}

/// Where a request goes according to the VirtualServices in force. Pure.
public enum RouteDecision: Equatable, Sendable {
    /// No VirtualService for the host: default routing (the dialled service, all endpoints).
    case defaultRoute
    /// A VirtualService exists but none of its routes matched: 404, flag NR.
    case noMatch(virtualService: String)
    case destination(RoutedDestination)
}

public struct RoutedDestination: Equatable, Sendable {
    /// Fully qualified host, e.g. payments.shop.svc.cluster.local.
    public var host: String
    public var subsetLabels: [String: String]?
    public var subset: String?
    public var port: UInt16?
    public var rewrite: HTTPRewrite?
    /// The uri condition that matched (Istio rewrites replace a matched prefix).
    public var matchedURI: StringMatch?
    public var requestHeaders: [HeaderOperations]
    public var responseHeaders: [HeaderOperations]
    public var routeName: String?
    /// The route's whole-request timeout (nil: none, Istio's default for HTTP).
    public var timeout: Duration?
    public var fault: HTTPFaultInjection?
    public var retries: HTTPRetry?
}

/// VirtualServices and DestinationRules compiled for lookups by host. Built by the agent
/// from the applied config and swapped whole into the ServiceDirectory.
public struct RouteTable: Sendable, Equatable {
    struct Compiled: Sendable, Equatable {
        let name: String
        let namespace: String
        let routes: [HTTPRoute]
    }

    private var byHost: [String: Compiled] = [:]
    /// host → subset name → labels.
    private var subsets: [String: [String: [String: String]]] = [:]
    /// host → policy, and host → subset → policy (a subset's own policy wins).
    private var policies: [String: LoadBalancer] = [:]
    private var subsetPolicies: [String: [String: LoadBalancer]] = [:]
    /// host → subset → that subset's own trafficPolicy.
    private var subsetTrafficPolicies: [String: [String: TrafficPolicy]] = [:]
    /// host → the DestinationRule's traffic policy (outlier detection, connection pool).
    private var trafficPolicies: [String: TrafficPolicy] = [:]
    /// host → RateLimitPolicies in front of it.
    private var rateLimits: [String: [RateLimitPolicy]] = [:]
    /// host → its HealthCheck (the first by namespace/name).
    public private(set) var healthChecks: [String: HealthCheck] = [:]
    /// host → its CircuitBreaker policy (the first by namespace/name).
    public private(set) var breakers: [String: CircuitBreakerPolicy] = [:]
    private var retryBudgets: [String: RetryBudgetPolicy] = [:]
    private var defaultRetryBudget: RetryBudgetPolicy?
    /// Every PeerAuthentication (mode lookups are per workload and port).
    public private(set) var peerAuthentications: [PeerAuthenticationPolicy] = []
    public private(set) var authorizationPolicies: [AuthorizationPolicy] = []
    /// The mesh-wide MeshConfig (the first by namespace/name; the validator refuses a second).
    public private(set) var meshConfig: MeshConfigPolicy?

    /// The AuthorizationPolicies that apply to a workload (its namespace's, selecting it,
    /// and the root namespace's).
    public func authorizationPolicies(namespace: String, labels: [String: String]) -> [AuthorizationPolicy] {
        authorizationPolicies.isEmpty ? [] : authorizationPolicies.filter { $0.applies(toNamespace: namespace, labels: labels) }
    }

    public init() {}

    /// The mTLS mode a workload applies to plaintext arriving on `port`.
    public func mtlsMode(namespace: String, labels: [String: String], port: UInt16) -> PeerAuthenticationPolicy.Mode {
        peerAuthentications.isEmpty ? .PERMISSIVE
            : PeerAuthenticationPolicy.mode(namespace: namespace, labels: labels, port: port, policies: peerAuthentications)
    }

    public init(resources: [Resource]) {
        // Deterministic: the first VirtualService (by namespace, name) claiming a host wins.
        let ordered = resources.sorted { ($0.metadata.namespace, $0.metadata.name) < ($1.metadata.namespace, $1.metadata.name) }
        for case .virtualService(let vs) in ordered {
            for host in vs.hosts {
                let fqdn = ConfigValidator.fqdn(host, namespace: vs.metadata.namespace)
                if byHost[fqdn] == nil {
                    byHost[fqdn] = Compiled(name: "\(vs.metadata.namespace)/\(vs.metadata.name)", namespace: vs.metadata.namespace, routes: vs.http)
                }
            }
        }
        for case .peerAuthentication(let p) in ordered { peerAuthentications.append(p) }
        for case .authorizationPolicy(let p) in ordered { authorizationPolicies.append(p) }
        for case .meshConfig(let m) in ordered where meshConfig == nil { meshConfig = m }
        for case .retryBudget(let b) in ordered {
            if let host = b.host {
                let fqdn = ConfigValidator.fqdn(host, namespace: b.metadata.namespace)
                if retryBudgets[fqdn] == nil { retryBudgets[fqdn] = b }
            } else if defaultRetryBudget == nil {
                defaultRetryBudget = b
            }
        }
        for case .circuitBreaker(let c) in ordered {
            let fqdn = ConfigValidator.fqdn(c.host, namespace: c.metadata.namespace)
            if breakers[fqdn] == nil { breakers[fqdn] = c }
        }
        for case .healthCheck(let h) in ordered {
            let fqdn = ConfigValidator.fqdn(h.host, namespace: h.metadata.namespace)
            if healthChecks[fqdn] == nil { healthChecks[fqdn] = h }
        }
        for case .rateLimitPolicy(let p) in ordered {
            rateLimits[ConfigValidator.fqdn(p.host, namespace: p.metadata.namespace), default: []].append(p)
        }
        for case .destinationRule(let dr) in ordered {
            let fqdn = ConfigValidator.fqdn(dr.host, namespace: dr.metadata.namespace)
            if subsets[fqdn] == nil {
                subsets[fqdn] = Dictionary(dr.subsets.map { ($0.name, $0.labels) }, uniquingKeysWith: { a, _ in a })
                policies[fqdn] = dr.trafficPolicy?.loadBalancer
                trafficPolicies[fqdn] = dr.trafficPolicy
                for s in dr.subsets {
                    if let lb = s.trafficPolicy?.loadBalancer { subsetPolicies[fqdn, default: [:]][s.name] = lb }
                    if let tp = s.trafficPolicy { subsetTrafficPolicies[fqdn, default: [:]][s.name] = tp }
                }
            }
        }
    }

    public var isEmpty: Bool { byHost.isEmpty && subsets.isEmpty && rateLimits.isEmpty && healthChecks.isEmpty && breakers.isEmpty && retryBudgets.isEmpty && defaultRetryBudget == nil && meshConfig == nil }

    /// A subset's own outlierDetection replaces the host's (Istio: each field of a subset's
    /// trafficPolicy overrides the same field of the DestinationRule's, as a whole).
    public func outlierDetection(host: String, subset: String? = nil) -> OutlierDetection? {
        subset.flatMap { subsetTrafficPolicies[host]?[$0]?.outlierDetection } ?? trafficPolicies[host]?.outlierDetection
    }

    public func rateLimitPolicies(host: String) -> [RateLimitPolicy] { rateLimits[host] ?? [] }

    public var hasRateLimits: Bool { !rateLimits.isEmpty }

    /// Whether any host has a breaker or outlier detection (answers must be recorded).
    public var tracksOutcomes: Bool {
        !breakers.isEmpty || trafficPolicies.values.contains { $0.outlierDetection != nil }
            || subsetTrafficPolicies.values.contains { $0.values.contains { $0.outlierDetection != nil } }
    }

    /// The service's RetryBudget, else the mesh-wide one (nil: the agent's flags).
    public func retryBudget(host: String) -> RetryBudgetPolicy? { retryBudgets[host] ?? defaultRetryBudget }

    public func connectionPool(host: String, subset: String? = nil) -> ConnectionPool? {
        subset.flatMap { subsetTrafficPolicies[host]?[$0]?.connectionPool } ?? trafficPolicies[host]?.connectionPool
    }

    /// Whether a subset has connectionPool limits of its own (then it counts them apart from
    /// the rest of the host, as Envoy's per-subset cluster does).
    public func hasOwnConnectionPool(host: String, subset: String?) -> Bool {
        subset.flatMap { subsetTrafficPolicies[host]?[$0]?.connectionPool } != nil
    }

    /// The load-balancing policy for a host (and subset); nil means the default, LEAST_REQUEST.
    public func loadBalancer(host: String, subset: String?) -> LoadBalancer? {
        subset.flatMap { subsetPolicies[host]?[$0] } ?? policies[host]
    }

    /// Ordered first match; then a weighted pick among the route's destinations using
    /// `random` in [0, 1).
    public func decide(host: String, facts: RequestFacts, random: Double) -> RouteDecision {
        guard let vs = byHost[host] else { return .defaultRoute }
        for route in vs.routes {
            let matched = route.match.first { Self.matches($0, facts) }
            guard route.match.isEmpty || matched != nil else { continue }
            guard let chosen = Self.pick(route.route, random: random) else { continue }
            let destHost = ConfigValidator.fqdn(chosen.destination.host, namespace: vs.namespace)
            var labels: [String: String]?
            if let subset = chosen.destination.subset {
                labels = subsets[destHost]?[subset] ?? ["weft.dev/unknown-subset": subset]
            }
            return .destination(RoutedDestination(
                host: destHost, subsetLabels: labels, subset: chosen.destination.subset,
                port: chosen.destination.port?.number, rewrite: route.rewrite, matchedURI: matched?.uri,
                requestHeaders: [route.headers?.request, chosen.headers?.request].compactMap { $0 },
                responseHeaders: [route.headers?.response, chosen.headers?.response].compactMap { $0 },
                routeName: route.name, timeout: route.timeout, fault: route.fault, retries: route.retries))
        }
        return .noMatch(virtualService: vs.name)
    }

    static func pick(_ destinations: [HTTPRouteDestination], random: Double) -> HTTPRouteDestination? {
        if destinations.count == 1 { return destinations[0] }
        let total = destinations.reduce(0) { $0 + ($1.weight ?? 0) }
        guard total > 0 else { return destinations.first }
        var point = random * Double(total)
        for d in destinations {
            point -= Double(d.weight ?? 0)
            if point < 0 { return d }
        }
        return destinations.last { ($0.weight ?? 0) > 0 }
    }

    public static func matches(_ m: HTTPMatchRequest, _ facts: RequestFacts) -> Bool {
        if let port = m.port, port != facts.port { return false }
        if let uri = m.uri, !matches(uri, facts.path) { return false }
        if let method = m.method, !matches(method, facts.method) { return false }
        for (name, match) in m.headers {
            guard let value = facts.header(name), matches(match, value) else { return false }
        }
        return true
    }

    static func matches(_ m: StringMatch, _ value: String) -> Bool {
        switch m {
        case .exact(let s): return value == s
        case .prefix(let s): return value.hasPrefix(s)
        case .regex(let pattern):
            // Istio's regexes are RE2, anchored on the whole value.
            guard let regex = try? Regex(pattern) else { return false }
            return (try? regex.wholeMatch(in: value)) != nil
        }
    }

    /// Istio's uri rewrite: replaces the matched prefix (or the whole path for exact and
    /// regex matches and routes without a uri match).
    public static func rewritePath(_ path: String, rewrite: String, match: StringMatch?) -> String {
        if case .prefix(let prefix)? = match, path.hasPrefix(prefix) {
            return rewrite + path.dropFirst(prefix.count)
        }
        return rewrite
    }
}
