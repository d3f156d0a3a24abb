import Foundation
import GRPCCore
import WeftCore
import WeftIdentity

/// The control plane's gRPC service, `weft.control.v1.Control` on port 15012 (TLS).
/// Messages are JSON (content-type application/grpc), the same Codable values the rest of
/// Weft uses; the method set is small on purpose:
///
/// - `Bundle` (unary): the trust bundle, so a joining agent can check it against its
///   `--ca-pin` before sending anything secret
/// - `Join` (unary): a join token and a CSR for the node's key → the node certificate
/// - `Subscribe` (bidirectional, node certificate required): the agent says hello and then
///   ACKs or NACKs every config snapshot the control plane streams to it
/// - `Register` (unary, node certificate): the complete list of workloads attached to the node
/// - `Sign` (unary, node certificate): a workload's CSR → its certificate, only for a
///   workload that node registered
/// - `Acquire` (unary, node certificate): leases of the global rate limits' buckets
public enum ControlAPI {
    public static let service = "weft.control.v1.Control"
    public static let bundle = MethodDescriptor(fullyQualifiedService: service, method: "Bundle")
    public static let join = MethodDescriptor(fullyQualifiedService: service, method: "Join")
    public static let subscribe = MethodDescriptor(fullyQualifiedService: service, method: "Subscribe")
    public static let register = MethodDescriptor(fullyQualifiedService: service, method: "Register")
    public static let sign = MethodDescriptor(fullyQualifiedService: service, method: "Sign")
    public static let acquire = MethodDescriptor(fullyQualifiedService: service, method: "Acquire")
    /// Most bucket leases one Acquire may ask for.
    public static let maxLeasesPerCall = 256
    public static let defaultPort = 15012
    /// Largest message either side accepts (a config snapshot is the big one).
    public static let maxMessageBytes = 16 * 1024 * 1024
}

public struct BundleRequest: Codable, Sendable, Equatable {
    public init() {}
}

public struct BundleReply: Codable, Sendable, Equatable {
    public var trustDomain: String
    public var bundlePEM: String
    /// The SPIFFE ID the control plane's serving certificate carries.
    public var controlIdentity: String

    public init(trustDomain: String, bundlePEM: String, controlIdentity: String) {
        self.trustDomain = trustDomain
        self.bundlePEM = bundlePEM
        self.controlIdentity = controlIdentity
    }
}

public struct JoinRequest: Codable, Sendable, Equatable {
    public var token: String
    public var node: String
    public var csrPEM: String

    public init(token: String, node: String, csrPEM: String) {
        self.token = token
        self.node = node
        self.csrPEM = csrPEM
    }
}

public struct JoinReply: Codable, Sendable, Equatable {
    public var identity: String
    /// Leaf first, then intermediates.
    public var chainPEM: [String]
    public var bundlePEM: String

    public init(identity: String, chainPEM: [String], bundlePEM: String) {
        self.identity = identity
        self.chainPEM = chainPEM
        self.bundlePEM = bundlePEM
    }
}

/// Agent → control plane on `Subscribe`: a hello first, then one ACK or NACK per snapshot.
public struct AgentMessage: Codable, Sendable, Equatable {
    public struct Hello: Codable, Sendable, Equatable {
        public var agentVersion: String
        /// The config version the agent serves now (restored from its state directory).
        public var appliedVersion: Int

        public init(agentVersion: String, appliedVersion: Int) {
            self.agentVersion = agentVersion
            self.appliedVersion = appliedVersion
        }
    }

    public var hello: Hello?
    /// The snapshot version now in force on the agent.
    public var ack: Int?
    /// A snapshot the agent refused, and why; it keeps serving its last good config.
    public var nack: Int?
    public var reason: String?

    public init(hello: Hello? = nil, ack: Int? = nil, nack: Int? = nil, reason: String? = nil) {
        self.hello = hello
        self.ack = ack
        self.nack = nack
        self.reason = reason
    }
}

/// Control plane → agent: the whole config at one version (documents as YAML), and the
/// mesh-wide registry (every node's workloads and pod route; sent again whenever it changes,
/// at the same config version).
public struct ConfigSnapshot: Codable, Sendable, Equatable {
    public var version: Int
    public var documents: [String]
    /// The identity of the control plane's store: versions compare only within one store.
    public var store: String
    public var nodes: [NodeWorkloads]?

    public init(version: Int, documents: [String], store: String, nodes: [NodeWorkloads]? = nil) {
        self.version = version
        self.documents = documents
        self.store = store
        self.nodes = nodes
    }
}

/// JSON as the gRPC message encoding.
public struct JSONCoder<Message: Codable & Sendable>: MessageSerializer, MessageDeserializer {
    public init() {}

    public func serialize<Bytes: GRPCContiguousBytes>(_ message: Message) throws -> Bytes {
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = .iso8601
        return Bytes(try encoder.encode(message))
    }

    public func deserialize<Bytes: GRPCContiguousBytes>(_ serializedMessageBytes: Bytes) throws -> Message {
        let data = serializedMessageBytes.withUnsafeBytes { Data($0) }
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        do {
            return try decoder.decode(Message.self, from: data)
        } catch {
            throw RPCError(code: .invalidArgument, message: "malformed \(Message.self): \(error)")
        }
    }
}

public struct RegisterRequest: Codable, Sendable, Equatable {
    /// Every workload attached to the calling node (replaces what it registered before).
    public var workloads: [WorkloadSpec]
    /// How other hosts reach this node's pods (nil: they cannot).
    public var route: NodeRoute?

    public init(workloads: [WorkloadSpec], route: NodeRoute? = nil) {
        self.workloads = workloads
        self.route = route
    }
}

/// A node's pod block and the host address it is routed through.
public struct NodeRoute: Codable, Sendable, Equatable {
    public var address: IPAddress
    public var podCIDR: CIDR

    public init(address: IPAddress, podCIDR: CIDR) {
        self.address = address
        self.podCIDR = podCIDR
    }
}

/// One node's part of the mesh-wide registry, as streamed to every agent.
public struct NodeWorkloads: Codable, Sendable, Equatable {
    public var node: String
    public var route: NodeRoute?
    public var workloads: [WorkloadSpec]

    public init(node: String, route: NodeRoute?, workloads: [WorkloadSpec]) {
        self.node = node
        self.route = route
        self.workloads = workloads
    }
}

public struct RegisterReply: Codable, Sendable, Equatable {
    public var registered: Int

    public init(registered: Int) {
        self.registered = registered
    }
}

public struct SignRequest: Codable, Sendable, Equatable {
    /// The netns name of a workload the calling node registered.
    public var workload: String
    public var csrPEM: String

    public init(workload: String, csrPEM: String) {
        self.workload = workload
        self.csrPEM = csrPEM
    }
}

public struct SignReply: Codable, Sendable, Equatable {
    public var certificate: IssuedCertificate
    public var bundlePEM: String

    public init(certificate: IssuedCertificate, bundlePEM: String) {
        self.certificate = certificate
        self.bundlePEM = bundlePEM
    }
}

public struct AcquireRequest: Codable, Sendable, Equatable {
    public var leases: [TokenLeaseRequest]

    public init(leases: [TokenLeaseRequest]) {
        self.leases = leases
    }
}

public struct AcquireReply: Codable, Sendable, Equatable {
    public var grants: [TokenLeaseGrant]

    public init(grants: [TokenLeaseGrant]) {
        self.grants = grants
    }
}
