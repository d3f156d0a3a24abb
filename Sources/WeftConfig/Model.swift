import WeftCore
/// Istio's networking kinds, the fields Weft supports. Field names are Istio's, so Istio
/// examples read the same. Everything carries its source location for diagnostics.

public struct ObjectMeta: Sendable, Equatable {
    public var name: String
    public var namespace: String
}

public enum StringMatch: Sendable, Equatable {
    case exact(String)
    case prefix(String)
    case regex(String)
}

public struct PortSelector: Sendable, Equatable {
    public var number: UInt16
}

public struct Destination: Sendable, Equatable {
    public var host: String
    public var subset: String?
    public var port: PortSelector?
    public var location: SourceLocation
}

public struct HeaderOperations: Sendable, Equatable {
    public var set: [String: String] = [:]
    public var add: [String: String] = [:]
    public var remove: [String] = []
}

public struct Headers: Sendable, Equatable {
    public var request: HeaderOperations?
    public var response: HeaderOperations?
}

public struct HTTPRouteDestination: Sendable, Equatable {
    public var destination: Destination
    public var weight: Int?
    public var headers: Headers?
    public var location: SourceLocation
}

public struct HTTPMatchRequest: Sendable, Equatable {
    public var name: String?
    public var uri: StringMatch?
    public var method: StringMatch?
    public var headers: [String: StringMatch] = [:]
    public var port: UInt16?
    public var location: SourceLocation
}

public struct HTTPRewrite: Sendable, Equatable {
    public var uri: String?
    public var authority: String?
}

public struct HTTPRetry: Sendable, Equatable {
    public var attempts: Int
    public var perTryTimeout: Duration?
    public var retryOn: [String]
}

public struct HTTPFaultInjection: Sendable, Equatable {
    public struct Delay: Sendable, Equatable {
        public var fixedDelay: Duration
        public var percentage: Double
    }

    public struct Abort: Sendable, Equatable {
        public var httpStatus: Int
        public var percentage: Double
    }

    public var delay: Delay?
    public var abort: Abort?
}

public struct HTTPRoute: Sendable, Equatable {
    public var name: String?
    public var match: [HTTPMatchRequest]
    public var route: [HTTPRouteDestination]
    public var rewrite: HTTPRewrite?
    public var headers: Headers?
    public var timeout: Duration?
    public var retries: HTTPRetry?
    public var fault: HTTPFaultInjection?
    public var location: SourceLocation
}

public struct VirtualService: Sendable, Equatable {
    public var metadata: ObjectMeta
    public var hosts: [String]
    public var http: [HTTPRoute]
    public var location: SourceLocation
}

public enum LoadBalancer: Sendable, Equatable {
    public enum Simple: String, Sendable, CaseIterable {
        case ROUND_ROBIN, LEAST_REQUEST, RANDOM, PASSTHROUGH
    }

    public enum HashKey: Sendable, Equatable {
        case header(String)
        case cookie(name: String, ttl: Duration?)
        case sourceIP
    }

    case simple(Simple)
    case consistentHash(HashKey)
}

public struct TrafficPolicy: Sendable, Equatable {
    public var loadBalancer: LoadBalancer?
    public var outlierDetection: OutlierDetection?
    public var connectionPool: ConnectionPool?

    public init(loadBalancer: LoadBalancer? = nil, outlierDetection: OutlierDetection? = nil, connectionPool: ConnectionPool? = nil) {
        self.loadBalancer = loadBalancer
        self.outlierDetection = outlierDetection
        self.connectionPool = connectionPool
    }
}

/// Istio's `outlierDetection`, with Istio's defaults for absent fields.
public struct OutlierDetection: Sendable, Equatable {
    /// 5xx answers (and failed connects/resets) in a row that eject an endpoint; 0: off.
    public var consecutive5xxErrors = 5
    /// 502/503/504 (and failed connects/resets) in a row; 0: off.
    public var consecutiveGatewayErrors = 0
    public var interval: Duration = .seconds(10)
    public var baseEjectionTime: Duration = .seconds(30)
    public var maxEjectionPercent = 10
    /// Below this share of healthy endpoints, ejections are ignored (panic); 0: never.
    public var minHealthPercent = 0

    public init() {}
}

/// Istio's `connectionPool` (circuit-breaking limits), per destination host.
public struct ConnectionPool: Sendable, Equatable {
    public var maxConnections: Int?
    public var connectTimeout: Duration?
    public var http1MaxPendingRequests: Int?
    public var http2MaxRequests: Int?
    public var maxRequestsPerConnection: Int?
    public var maxRetries: Int?
    public var idleTimeout: Duration?

    public init() {}
}

public struct Subset: Sendable, Equatable {
    public var name: String
    public var labels: [String: String]
    public var trafficPolicy: TrafficPolicy?
    public var location: SourceLocation
}

public struct DestinationRule: Sendable, Equatable {
    public var metadata: ObjectMeta
    public var host: String
    public var trafficPolicy: TrafficPolicy?
    public var subsets: [Subset]
    public var location: SourceLocation
}

/// `weft.dev/v1alpha1 RateLimitPolicy`: token buckets in front of a service.
public struct RateLimitPolicy: Sendable, Equatable {
    public struct Limit: Sendable, Equatable {
        public enum Key: Sendable, Equatable {
            /// One bucket per calling pod address.
            case sourceIP
            /// One bucket per calling workload identity (its SPIFFE ID: every replica of a
            /// caller shares it); callers without an identity share one bucket.
            case sourceIdentity
            /// One bucket per value of this request header (lower-case name); requests
            /// without it share one bucket.
            case header(String)
            /// One bucket for everyone.
            case service
        }

        public var name: String
        public var key: Key
        /// Tokens added per second (requestsPerUnit / unit).
        public var perSecond: Double
        public var requestsPerUnit: Int
        public var unit: String
        /// Bucket size: how many requests may arrive at once (default requestsPerUnit).
        public var burst: Int
        /// Only requests matching one of these (empty: all).
        public var match: [HTTPMatchRequest]
        /// Only requests a VirtualService sent through its HTTP route of this name (nil: any).
        public var route: String? = nil
        public var location: SourceLocation
    }

    /// `local`: each agent keeps its own buckets. `global`: one bucket for the whole mesh,
    /// kept by the control plane's coordinator (agents lease tokens from it).
    public enum Mode: String, Sendable, Equatable {
        case local, global
    }

    public var metadata: ObjectMeta
    public var host: String
    public var mode: Mode = .local
    public var limits: [Limit]
    public var location: SourceLocation
}

/// `weft.dev/v1alpha1 RetryBudget`: the retry budget of one service, or (without `host`) the
/// mesh-wide default that replaces the agent flags' values.
public struct RetryBudgetPolicy: Sendable, Equatable {
    public var metadata: ObjectMeta
    public var host: String?
    public var ratio: Double?
    public var minRetriesPerSecond: Double?
    /// Opt-in: retry POST, PATCH… like idempotent requests (the app must make them safe).
    public var retryNonIdempotent = false
    public var location: SourceLocation

    public init(metadata: ObjectMeta, host: String?, location: SourceLocation) {
        self.metadata = metadata
        self.host = host
        self.location = location
    }
}

/// `weft.dev/v1alpha1 CircuitBreaker`: a service-level breaker (see CircuitBreaker in WeftProxy).
public struct CircuitBreakerPolicy: Sendable, Equatable {
    public var metadata: ObjectMeta
    public var host: String
    /// Open when failures / requests over `window` reach this (0 < ratio ≤ 1)…
    public var failureRatio: Double = 0.5
    /// …with at least this many requests in the window.
    public var minimumRequests: Int = 20
    public var window: Duration = .seconds(10)
    public var openDuration: Duration = .seconds(30)
    public var halfOpenRequests: Int = 3
    public var location: SourceLocation

    public init(metadata: ObjectMeta, host: String, location: SourceLocation) {
        self.metadata = metadata
        self.host = host
        self.location = location
    }
}

/// `weft.dev/v1alpha1 HealthCheck`: active HTTP probes of every endpoint of a service.
public struct HealthCheck: Sendable, Equatable {
    public var metadata: ObjectMeta
    public var host: String
    public var path: String
    /// The endpoint port probed (the app's port); nil: the service's first port's target.
    public var port: UInt16?
    public var interval: Duration
    public var timeout: Duration
    public var unhealthyThreshold: Int
    public var healthyThreshold: Int
    public var location: SourceLocation
}

/// `security.istio.io PeerAuthentication`: whether a workload accepts plaintext. Mesh-wide
/// in the root namespace (weft-system), else per namespace, or per workload with a
/// selector; `portLevelMtls` (selector only) overrides per workload port.
public struct PeerAuthenticationPolicy: Sendable, Equatable {
    public enum Mode: String, Sendable, Equatable, CaseIterable {
        /// Only mutual TLS (the mesh tunnel); plaintext is refused.
        case STRICT
        /// Both; meshed callers use mutual TLS, plaintext is accepted and counted.
        case PERMISSIVE
        /// No mutual TLS: meshed callers connect in plaintext.
        case DISABLE
        /// Inherit from the parent (namespace, then mesh).
        case UNSET
    }

    public var metadata: ObjectMeta
    /// nil: the whole namespace (or mesh, in the root namespace).
    public var selector: [String: String]?
    public var mode: Mode
    public var portModes: [UInt16: Mode]
    public var location: SourceLocation

    public static let rootNamespace = "weft-system"

    public init(metadata: ObjectMeta, selector: [String: String]?, mode: Mode, portModes: [UInt16: Mode], location: SourceLocation) {
        self.metadata = metadata
        self.selector = selector
        self.mode = mode
        self.portModes = portModes
        self.location = location
    }

    /// The mode for one port of one workload: the most specific policy that sets one wins
    /// (port of a selecting policy, selecting policy, namespace, mesh); PERMISSIVE when none
    /// does. Among equally specific policies the oldest name (alphabetically first) wins,
    /// so the answer never depends on apply order.
    public static func mode(namespace: String, labels: [String: String], port: UInt16, policies: [PeerAuthenticationPolicy]) -> Mode {
        // Comparisons are only ever within one namespace, so (namespace, name) order decides
        // ties by name; the route table keeps its policies in that order (no sort per call).
        let before = { (a: PeerAuthenticationPolicy, b: PeerAuthenticationPolicy) in
            (a.metadata.namespace, a.metadata.name) < (b.metadata.namespace, b.metadata.name)
        }
        let ordered = zip(policies, policies.dropFirst()).allSatisfy { !before($1, $0) }
        let sorted = ordered ? policies : policies.sorted(by: before)
        let selecting = sorted.filter { p in
            p.metadata.namespace == namespace && (p.selector.map { sel in sel.allSatisfy { labels[$0.key] == $0.value } } ?? false)
        }
        for p in selecting { if let m = p.portModes[port], m != .UNSET { return m } }
        for p in selecting where p.mode != .UNSET { return p.mode }
        for p in sorted where p.metadata.namespace == namespace && p.selector == nil && p.mode != .UNSET { return p.mode }
        for p in sorted where p.metadata.namespace == rootNamespace && p.selector == nil && p.mode != .UNSET { return p.mode }
        return .PERMISSIVE
    }
}

/// `weft.dev/v1alpha1 MeshConfig`: mesh-wide settings. Today: what may leave a meshed netns
/// (`outboundTrafficPolicy`, Istio's meshConfig field of the same name, plus the exceptions
/// that Istio would express with ServiceEntries).
public struct MeshConfigPolicy: Sendable, Equatable {
    public enum OutboundMode: String, Sendable, Equatable, CaseIterable {
        /// Anything may be called; calls outside the registry are still logged and counted.
        case ALLOW_ANY
        /// Only mesh services and workloads, and `allowedDestinations`.
        case REGISTRY_ONLY
    }

    public enum EgressProtocol: String, Sendable, Equatable, CaseIterable {
        case TCP, UDP, ICMP, ANY
    }

    /// A destination outside the registry that REGISTRY_ONLY still lets through.
    public struct AllowedDestination: Sendable, Equatable {
        public var cidr: CIDR
        /// Empty: every port (ICMP has none).
        public var ports: [UInt16]
        public var proto: EgressProtocol

        public init(cidr: CIDR, ports: [UInt16] = [], proto: EgressProtocol = .ANY) {
            self.cidr = cidr
            self.ports = ports
            self.proto = proto
        }
    }

    public var metadata: ObjectMeta
    public var outboundMode: OutboundMode = .ALLOW_ANY
    public var allowedDestinations: [AllowedDestination] = []
    public var location: SourceLocation

    public init(metadata: ObjectMeta, location: SourceLocation) {
        self.metadata = metadata
        self.location = location
    }
}

public enum Resource: Sendable, Equatable {
    case peerAuthentication(PeerAuthenticationPolicy)
    case authorizationPolicy(AuthorizationPolicy)
    case virtualService(VirtualService)
    case destinationRule(DestinationRule)
    case rateLimitPolicy(RateLimitPolicy)
    case healthCheck(HealthCheck)
    case circuitBreaker(CircuitBreakerPolicy)
    case retryBudget(RetryBudgetPolicy)
    case meshConfig(MeshConfigPolicy)

    public var kind: String {
        switch self {
        case .peerAuthentication: return "PeerAuthentication"
        case .authorizationPolicy: return "AuthorizationPolicy"
        case .virtualService: return "VirtualService"
        case .destinationRule: return "DestinationRule"
        case .rateLimitPolicy: return "RateLimitPolicy"
        case .healthCheck: return "HealthCheck"
        case .circuitBreaker: return "CircuitBreaker"
        case .retryBudget: return "RetryBudget"
        case .meshConfig: return "MeshConfig"
        }
    }

    public var metadata: ObjectMeta {
        switch self {
        case .peerAuthentication(let p): return p.metadata
        case .authorizationPolicy(let p): return p.metadata
        case .virtualService(let v): return v.metadata
        case .destinationRule(let d): return d.metadata
        case .rateLimitPolicy(let p): return p.metadata
        case .healthCheck(let h): return h.metadata
        case .circuitBreaker(let c): return c.metadata
        case .retryBudget(let b): return b.metadata
        case .meshConfig(let m): return m.metadata
        }
    }

    public var location: SourceLocation {
        switch self {
        case .peerAuthentication(let p): return p.location
        case .authorizationPolicy(let p): return p.location
        case .virtualService(let v): return v.location
        case .destinationRule(let d): return d.location
        case .rateLimitPolicy(let p): return p.location
        case .healthCheck(let h): return h.location
        case .circuitBreaker(let c): return c.location
        case .retryBudget(let b): return b.location
        case .meshConfig(let m): return m.location
        }
    }
}
