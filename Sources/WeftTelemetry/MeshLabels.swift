/// One side of a request or connection as Istio's standard metrics label it.
public struct PeerLabels: Hashable, Sendable {
    public var workload: String
    public var namespace: String
    /// SPIFFE ID (`spiffe://td/ns/N/sa/S`), or "unknown".
    public var principal: String
    /// The `app` label (else the service name), and the `version` label.
    public var app: String
    public var version: String

    public init(workload: String, namespace: String, principal: String?, app: String, version: String?) {
        self.workload = workload
        self.namespace = namespace
        self.principal = principal ?? "unknown"
        self.app = app
        self.version = version ?? "unknown"
    }

    public static let unknown = PeerLabels(workload: "unknown", namespace: "unknown", principal: nil, app: "unknown", version: nil)
}

/// The destination service: fully qualified host, short name, namespace.
public struct ServiceLabels: Hashable, Sendable {
    public var host: String
    public var name: String
    public var namespace: String

    public init(host: String, name: String, namespace: String) {
        self.host = host
        self.name = name
        self.namespace = namespace
    }

    public static let unknown = ServiceLabels(host: "unknown", name: "unknown", namespace: "unknown")
}

/// Every label of one series of Istio's standard metrics. Requests fill the response
/// fields; TCP series leave them empty (and are emitted without them).
public struct MeshLabels: Hashable, Sendable {
    public enum Reporter: String, Sendable {
        case source, destination
    }

    public var reporter: Reporter
    public var source: PeerLabels
    public var destination: PeerLabels
    public var service: ServiceLabels
    /// http, grpc or tcp.
    public var requestProtocol: String
    /// mutual_tls, none or unknown.
    public var securityPolicy: String
    public var responseCode: Int = 0
    /// Envoy's response flags ("-" when none).
    public var responseFlags: String = "-"
    public var grpcStatus: String = ""

    public init(reporter: Reporter, source: PeerLabels, destination: PeerLabels, service: ServiceLabels,
                requestProtocol: String, securityPolicy: String) {
        self.reporter = reporter
        self.source = source
        self.destination = destination
        self.service = service
        self.requestProtocol = requestProtocol
        self.securityPolicy = securityPolicy
    }

    /// In Istio's names and order.
    public func prometheus(withResponse: Bool) -> [(String, String)] {
        var l: [(String, String)] = [
            ("reporter", reporter.rawValue),
            ("source_workload", source.workload), ("source_workload_namespace", source.namespace),
            ("source_principal", source.principal), ("source_app", source.app), ("source_version", source.version),
            ("source_canonical_service", source.app), ("source_canonical_revision", source.version),
            ("destination_workload", destination.workload), ("destination_workload_namespace", destination.namespace),
            ("destination_principal", destination.principal), ("destination_app", destination.app),
            ("destination_version", destination.version),
            ("destination_canonical_service", destination.app), ("destination_canonical_revision", destination.version),
            ("destination_service", service.host), ("destination_service_name", service.name),
            ("destination_service_namespace", service.namespace),
            ("request_protocol", requestProtocol),
            ("connection_security_policy", securityPolicy),
        ]
        if withResponse {
            l += [("response_code", "\(responseCode)"), ("grpc_response_status", grpcStatus), ("response_flags", responseFlags)]
        }
        return l
    }

    /// The same series with every peer and service label collapsed: where series beyond the
    /// cardinality bound are counted, so totals stay right.
    public var overflowed: MeshLabels {
        var o = self
        o.source = PeerLabels(workload: "overflow", namespace: "overflow", principal: "overflow", app: "overflow", version: "overflow")
        o.destination = o.source
        o.service = ServiceLabels(host: "overflow", name: "overflow", namespace: "overflow")
        return o
    }
}
