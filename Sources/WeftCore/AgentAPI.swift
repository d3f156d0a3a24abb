import Foundation
/// Messages of the agent's local API (/run/weft/agent.sock): one JSON request per line, one
/// JSON response per line, one exchange per connection. Shared by the agent and the CLI.

/// How the capture rules in a workload netns must look for the agent's proxy to work; the
/// agent hands this to `weft run` so the two can never disagree.
public struct CaptureSettings: Codable, Sendable, Equatable {
    public var outboundPort: UInt16 = 15001
    public var inboundPort: UInt16 = 15006
    public var tunnelPort: UInt16 = 15008
    public var proxyMark: UInt32 = 0x539
    /// Where port 53 (UDP and TCP) is redirected; nil: DNS is not captured.
    public var dnsPort: UInt16? = 15053
    /// NFQUEUE number for new non-TCP flows leaving a workload netns (the agent gives each a
    /// verdict); nil: non-TCP traffic is not checked.
    public var egressQueue: UInt16? = 15009

    public init() {}
}

/// An address handed out for a new workload netns, with what its veth needs around it.
public struct PodNetwork: Codable, Sendable, Equatable {
    public var podIP: IPAddress
    public var prefixLength: Int
    public var gateway: IPAddress
    public var bridge: String
    /// IPv6 (ULA) address, when the agent has an IPv6 pod prefix.
    public var podIPv6: IPAddress?
    public var prefixLengthV6: Int?
    public var gatewayV6: IPAddress?

    public init(podIP: IPAddress, prefixLength: Int, gateway: IPAddress, bridge: String,
                podIPv6: IPAddress? = nil, prefixLengthV6: Int? = nil, gatewayV6: IPAddress? = nil) {
        self.podIP = podIP
        self.prefixLength = prefixLength
        self.gateway = gateway
        self.bridge = bridge
        self.podIPv6 = podIPv6
        self.prefixLengthV6 = prefixLengthV6
        self.gatewayV6 = gatewayV6
    }
}

/// What a workload is: the netns it lives in and the service it serves.
public struct WorkloadSpec: Codable, Sendable, Equatable {
    public var name: String
    public var netns: NetnsName
    public var service: ServiceName
    public var namespace: MeshNamespace = .default
    public var ports: [PortMapping]
    public var labels: [String: String]
    /// Set for namespaces created by `weft run` (the agent allocated the address).
    public var podIP: IPAddress?
    /// The workload belongs to a running `weft run`, which removes it when its command exits.
    public var ownedByRun: Bool? = nil
    public var podIPv6: IPAddress?
    /// The identity's service account (default: the service name):
    /// spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>.
    public var serviceAccount: String?

    public init(name: String, netns: NetnsName, service: ServiceName, namespace: MeshNamespace = .default,
                ports: [PortMapping], labels: [String: String], podIP: IPAddress?) {
        self.name = name
        self.netns = netns
        self.service = service
        self.namespace = namespace
        self.ports = ports
        self.labels = labels
        self.podIP = podIP
    }
}

public struct TrafficCounters: Codable, Sendable, Equatable {
    public var connectionsInbound: Int = 0
    public var connectionsOutbound: Int = 0
    public var bytesInboundReceived: Int = 0
    public var bytesInboundSent: Int = 0
    public var bytesOutboundSent: Int = 0
    public var bytesOutboundReceived: Int = 0
    /// Connections refused before forwarding (no original destination, loop, connect failure).
    public var connectionErrors: Int = 0
    /// DNS queries answered from the mesh, sent upstream, and unreadable.
    public var dnsAnswered: Int = 0
    public var dnsForwarded: Int = 0
    public var dnsMalformed: Int = 0
    /// HTTP requests through the L7 outbound path, and those answered with a mesh error.
    public var httpRequests: Int = 0
    public var httpErrors: Int = 0
    /// Outbound connections by the protocol they were handled as (declared or detected):
    /// HTTP/1.1 and h2c take the L7 path; tls and opaque are forwarded as bytes.
    public var protocolHTTP1: Int = 0
    public var protocolHTTP2: Int = 0
    public var protocolTLS: Int = 0
    public var protocolOpaque: Int = 0
    /// Outbound connections on undeclared ports whose server spoke first (forwarded opaque).
    public var serverFirst: Int = 0
    /// HTTP retries made, and retries the retry budget refused.
    public var httpRetries: Int = 0
    public var httpRetriesDenied: Int = 0
    /// Requests answered 429 by a RateLimitPolicy.
    public var httpRateLimited: Int = 0
    /// Mesh tunnel (15008): connections accepted, refused (TLS or identity), and streams
    /// this workload opened to peers; plaintext inbound refused under STRICT mTLS.
    public var tunnelConnections: Int = 0
    public var tunnelRefused: Int = 0
    public var tunnelStreamsOut: Int = 0
    public var plaintextRefused: Int = 0
    /// Requests (HTTP) and connections (TCP) denied by AuthorizationPolicy.
    public var authzDenied: Int = 0
    /// Plaintext connections accepted from outside the mesh (PERMISSIVE or DISABLE ports).
    public var plaintextInbound: Int = 0
    /// Outbound requests without trace context made while a traced request was being served.
    public var traceContextDropped: Int = 0
    /// Connections refused at the per-workload connection limit.
    public var connectionsOverLimit: Int = 0
    /// New flows leaving the netns outside the mesh (TCP to destinations outside the
    /// registry; every UDP, ICMP or other non-TCP flow), keyed "protocol/verdict", e.g.
    /// "udp/denied".
    public var egress: [String: Int] = [:]

    public init() {}
}

/// How one outbound connection was handled: what it was detected (or declared) as, and why.
public struct ConnectionRecord: Codable, Sendable, Equatable {
    /// Seconds since the epoch when the protocol was decided.
    public var time: Double
    public var client: String
    public var destination: String
    /// `http/1.1`, `h2c`, `tls` or `opaque`.
    public var proto: String
    /// `declared` (the service port names it), `sniffed` (the client's first bytes),
    /// `server-first` (the upstream spoke before the client), `client-eof`, `timeout`
    /// (the client stopped mid-way through something that could have been HTTP).
    public var decidedBy: String
    /// Milliseconds from accept to the decision.
    public var detectMillis: Double

    public init(time: Double, client: String, destination: String, proto: String, decidedBy: String, detectMillis: Double) {
        self.time = time
        self.client = client
        self.destination = destination
        self.proto = proto
        self.decidedBy = decidedBy
        self.detectMillis = detectMillis
    }
}

public struct WorkloadStatus: Codable, Sendable, Equatable {
    public var spec: WorkloadSpec
    public var podIPs: [IPAddress]
    public var counters: TrafficCounters
    public var attachedAt: Double
    /// The most recent outbound connections (newest last), with their detected protocol.
    public var recentConnections: [ConnectionRecord]

    public init(spec: WorkloadSpec, podIPs: [IPAddress], counters: TrafficCounters, attachedAt: Double,
                recentConnections: [ConnectionRecord] = []) {
        self.spec = spec
        self.podIPs = podIPs
        self.counters = counters
        self.attachedAt = attachedAt
        self.recentConnections = recentConnections
    }
}

public enum AgentRequest: Codable, Sendable, Equatable {
    case ping
    /// Reserve a pod address for a netns `weft run` is about to create.
    case allocate(netns: NetnsName)
    /// Give back a reservation that was never attached (a failed `weft run`).
    case release(netns: NetnsName)
    case attach(WorkloadSpec)
    /// `force` detaches a workload that a running `weft run` owns (it normally detaches its
    /// own when its command exits).
    case detach(netns: NetnsName, force: Bool)
    case listWorkloads
    case listServices
    /// Apply or delete config: every file parsed and the merged result validated first;
    /// any error and nothing changes.
    case applyConfig([ConfigFile])
    case deleteConfig([ConfigFile])
    case getConfig
    /// Workload certificates and the trust bundle.
    case listCertificates
    /// Root rotation of the agent's own CA (start: new root, old still trusted; finish: old
    /// roots dropped), then every workload re-issued.
    case rotateCA(finish: Bool)
    /// Re-read the CA files (an operator CA replaced in place) and re-issue every workload.
    case reloadCA
    /// Control plane only: a new join token valid for `ttlSeconds`.
    case createToken(ttlSeconds: Int)
    /// Control plane only: the agents it knows and their config sync state.
    case listAgents
}

/// One workload's certificate, as `weft get certs` shows it.
public struct CertificateStatus: Codable, Sendable, Equatable {
    public var workload: String
    public var netns: String
    public var identity: String
    public var serial: String
    public var notBefore: Date
    public var notAfter: Date
    public var renewAt: Date
    /// Certificates issued to this workload since it was attached (1 + renewals).
    public var issued: Int
    /// Leaf first, then intermediates (public; the key never leaves the agent).
    public var chainPEM: [String]

    public init(workload: String, netns: String, identity: String, serial: String, notBefore: Date, notAfter: Date,
                renewAt: Date, issued: Int, chainPEM: [String]) {
        self.workload = workload
        self.netns = netns
        self.identity = identity
        self.serial = serial
        self.notBefore = notBefore
        self.notAfter = notAfter
        self.renewAt = renewAt
        self.issued = issued
        self.chainPEM = chainPEM
    }
}

public struct CertificatesReply: Codable, Sendable, Equatable {
    public var trustDomain: String
    /// The roots every workload trusts, PEM.
    public var bundlePEM: String
    public var workloads: [CertificateStatus]

    public init(trustDomain: String, bundlePEM: String, workloads: [CertificateStatus]) {
        self.trustDomain = trustDomain
        self.bundlePEM = bundlePEM
        self.workloads = workloads
    }
}

public struct ConfigFile: Codable, Sendable, Equatable {
    public var name: String
    public var content: String

    public init(name: String, content: String) {
        self.name = name
        self.content = content
    }
}

/// The answer to a config request.
public struct ConfigReply: Codable, Sendable, Equatable {
    /// "VirtualService/shop/payments configured" and the like.
    public var changes: [String] = []
    /// Rendered diagnostics (file:line:col: severity: message, with why).
    public var diagnostics: [String] = []
    public var rejected = false
    /// For getConfig: the stored documents.
    public var documents: [String] = []
    public var version = 0

    public init() {}
}

public struct AgentResponse: Codable, Sendable, Equatable {
    public var error: String?
    public var errorCode: String?
    public var capture: CaptureSettings?
    public var network: PodNetwork?
    public var workloads: [WorkloadStatus]?
    public var services: [ServiceStatus]?
    public var config: ConfigReply?
    public var version: String?
    public var certificates: CertificatesReply?
    public var agents: [AgentSyncStatus]?
    public var token: JoinTokenReply?
    /// On ping: where this agent's config comes from (nil: it is its own control plane).
    public var control: ControlLinkStatus?

    public init(error: String? = nil, errorCode: String? = nil, capture: CaptureSettings? = nil,
                network: PodNetwork? = nil, workloads: [WorkloadStatus]? = nil, services: [ServiceStatus]? = nil,
                config: ConfigReply? = nil, version: String? = nil, certificates: CertificatesReply? = nil) {
        self.certificates = certificates
        self.services = services
        self.config = config
        self.error = error
        self.errorCode = errorCode
        self.capture = capture
        self.network = network
        self.workloads = workloads
        self.version = version
    }

    public static func failure(_ e: WeftError) -> AgentResponse {
        AgentResponse(error: e.description, errorCode: e.code.description)
    }
}

public enum WeftVersion {
    public static let current = "0.1.0"
}

public enum WeftDefaults {
    public static let agentSocket = "/run/weft/agent.sock"
    public static let controlSocket = "/run/weft-control/control.sock"
    public static let controlStateDirectory = "/var/lib/weft-control"
    public static let bridge = "weft0"
    public static let podCIDR = "10.231.0.0/16"
    /// ULA prefix ("weft" in hex); a pod's IPv6 address ends in its IPv4 address.
    public static let podCIDRv6 = "fd77:7765:6674::/64"
    /// Virtual IPs of services (Istio's auto-allocation range).
    public static let serviceCIDR = "240.240.0.0/16"
    /// IPv6 virtual IPs: this prefix with the IPv4 virtual IP in the last 32 bits.
    public static let serviceCIDRv6 = "fd77:7765:6674:ffff::/96"
    public static let stateDirectory = "/var/lib/weft"
}

extension WorkloadSpec {
    public var serviceKey: ServiceKey { ServiceKey(name: service, namespace: namespace) }
}

/// One agent as the control plane sees it (`weft get agents`).
public struct AgentSyncStatus: Codable, Sendable, Equatable {
    public var node: String
    public var identity: String
    public var connected: Bool
    /// Where it connected from, and when it was last connected or heard from.
    public var address: String?
    public var lastSeen: Date
    public var agentVersion: String?
    /// The last config version it applied, and the last one it refused (with why).
    public var ackedVersion: Int?
    public var nackedVersion: Int?
    public var nackReason: String?
    /// The control plane's current config version, for comparison.
    public var currentVersion: Int

    public var inSync: Bool { ackedVersion == currentVersion }

    public init(node: String, identity: String, connected: Bool, address: String?, lastSeen: Date, agentVersion: String?,
                ackedVersion: Int?, nackedVersion: Int?, nackReason: String?, currentVersion: Int) {
        self.node = node
        self.identity = identity
        self.connected = connected
        self.address = address
        self.lastSeen = lastSeen
        self.agentVersion = agentVersion
        self.ackedVersion = ackedVersion
        self.nackedVersion = nackedVersion
        self.nackReason = nackReason
        self.currentVersion = currentVersion
    }
}

/// A join token, as `weft control token create` prints it. The secret is shown once; the
/// control plane keeps only its SHA-256.
public struct JoinTokenReply: Codable, Sendable, Equatable {
    public var token: String
    public var expires: Date
    /// `sha256:<hex>` of the control plane's root certificate, for `--ca-pin`.
    public var caPin: String

    public init(token: String, expires: Date, caPin: String) {
        self.token = token
        self.expires = expires
        self.caPin = caPin
    }
}

/// How an agent gets its config: alone, or from a control plane (and how that is going).
public struct ControlLinkStatus: Codable, Sendable, Equatable {
    public var address: String
    public var node: String
    public var connected: Bool
    public var appliedVersion: Int?
    public var lastError: String?
    public var since: Date

    public init(address: String, node: String, connected: Bool, appliedVersion: Int?, lastError: String?, since: Date) {
        self.address = address
        self.node = node
        self.connected = connected
        self.appliedVersion = appliedVersion
        self.lastError = lastError
        self.since = since
    }
}
