import WeftConfig
import WeftCore

/// One new flow leaving a meshed netns, as the egress check sees it: a TCP connection the
/// outbound proxy accepted, or the first packet of a UDP/ICMP/other flow queued by NFQUEUE.
public struct EgressFlow: Sendable, Equatable, CustomStringConvertible {
    public enum Proto: Sendable, Equatable, CustomStringConvertible {
        case tcp, udp, icmp
        /// Any other IP protocol, by number (SCTP 132, GRE 47, ...).
        case other(UInt8)

        public init(ipProtocol: UInt8) {
            switch ipProtocol {
            case 6: self = .tcp
            case 17: self = .udp
            case 1, 58: self = .icmp
            default: self = .other(ipProtocol)
            }
        }

        public var description: String {
            switch self {
            case .tcp: return "tcp"
            case .udp: return "udp"
            case .icmp: return "icmp"
            case .other(let n): return "ip-proto-\(n)"
            }
        }
    }

    public var proto: Proto
    public var destination: IPAddress
    /// TCP/UDP only.
    public var port: UInt16?

    public init(proto: Proto, destination: IPAddress, port: UInt16?) {
        self.proto = proto
        self.destination = destination
        self.port = port
    }

    public var description: String {
        let host = destination.family == .v6 ? "[\(destination)]" : "\(destination)"
        return port.map { "\(proto) \(host):\($0)" } ?? "\(proto) \(host)"
    }
}

public enum EgressVerdict: Sendable, Equatable {
    case allow(reason: String)
    case deny(reason: String)

    public var allowed: Bool { if case .allow = self { return true } else { return false } }
    public var reason: String {
        switch self {
        case .allow(let r), .deny(let r): return r
        }
    }
}

/// Whether a flow may leave: pure, so every rule is a unit test.
public enum EgressDecision {
    /// `inRegistry`: the destination is a service virtual IP or a meshed workload's address.
    public static func decide(_ flow: EgressFlow, policy: MeshConfigPolicy?, inRegistry: Bool) -> EgressVerdict {
        let mode = policy?.outboundMode ?? .ALLOW_ANY
        if inRegistry { return .allow(reason: "in the mesh registry") }
        if let policy, let rule = policy.allowedDestinations.first(where: { matches($0, flow) }) {
            return .allow(reason: "allowed destination \(rule.cidr)")
        }
        switch mode {
        case .ALLOW_ANY:
            return .allow(reason: "outside the registry, ALLOW_ANY")
        case .REGISTRY_ONLY:
            return .deny(reason: "\(flow.destination) is not a mesh service or workload, nor an allowedDestination (REGISTRY_ONLY)")
        }
    }

    static func matches(_ rule: MeshConfigPolicy.AllowedDestination, _ flow: EgressFlow) -> Bool {
        guard rule.cidr.contains(flow.destination) else { return false }
        switch (rule.proto, flow.proto) {
        case (.ANY, _), (.TCP, .tcp), (.UDP, .udp), (.ICMP, .icmp): break
        default: return false
        }
        if rule.ports.isEmpty { return true }
        guard let port = flow.port else { return false }
        return rule.ports.contains(port)
    }
}
