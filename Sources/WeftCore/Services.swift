/// A mesh namespace (Istio's namespace: part of service names and identities). A DNS label.
public struct MeshNamespace: ValidatedName, Comparable {
    public let rawValue: String
    public static let `default` = try! MeshNamespace("default")

    public init(_ raw: String) throws {
        guard DNSLabel.isValid(raw) else {
            throw WeftError(.invalidArgument,
                            "invalid namespace '\(raw)': use a DNS label (lowercase letters, digits, '-', at most 63)")
        }
        rawValue = raw
    }

    public static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }
}

/// A service is named within a namespace: `payments.default`.
public struct ServiceKey: Hashable, Sendable, Codable, Comparable, CustomStringConvertible {
    public let name: ServiceName
    public let namespace: MeshNamespace

    public init(name: ServiceName, namespace: MeshNamespace) {
        self.name = name
        self.namespace = namespace
    }

    public var description: String { "\(name).\(namespace)" }
    /// The fully qualified name Istio users write: payments.default.svc.cluster.local.
    public var fqdn: String { "\(name).\(namespace).svc.cluster.local" }
    public static func < (a: Self, b: Self) -> Bool { (a.namespace, a.name.rawValue) < (b.namespace, b.name.rawValue) }
}

/// One workload serving a service.
public struct ServiceEndpoint: Codable, Sendable, Equatable {
    public var workload: String
    public var ip: IPAddress
    public var ipv6: IPAddress?
    public var ports: [PortMapping]
    public var labels: [String: String]

    public init(workload: String, ip: IPAddress, ipv6: IPAddress?, ports: [PortMapping], labels: [String: String]) {
        self.workload = workload
        self.ip = ip
        self.ipv6 = ipv6
        self.ports = ports
        self.labels = labels
    }
}

/// A service as the registry sees it: its virtual IPs, ports and live endpoints.
public struct ServiceStatus: Codable, Sendable, Equatable {
    public var key: ServiceKey
    public var vip: IPAddress
    public var vip6: IPAddress?
    public var ports: [PortMapping]
    public var endpoints: [ServiceEndpoint]
    /// Endpoints (workload names) currently ejected by outlier detection.
    public var ejected: [String]
    /// Endpoints failing their active health check (weft.dev HealthCheck).
    public var unhealthy: [String] = []
    /// The service's circuit breaker: closed, open or half-open (nil: it has none).
    public var breaker: String?

    public init(key: ServiceKey, vip: IPAddress, vip6: IPAddress?, ports: [PortMapping], endpoints: [ServiceEndpoint], ejected: [String] = []) {
        self.key = key
        self.vip = vip
        self.vip6 = vip6
        self.ports = ports
        self.endpoints = endpoints
        self.ejected = ejected
    }
}
