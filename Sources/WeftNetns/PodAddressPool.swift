import Glibc
import WeftCore

/// Hands out pod addresses from the node's pod CIDR. The first host address is the bridge's
/// gateway; network and broadcast addresses are never given out. Pure state, owned by the
/// agent, so concurrent `weft run`s cannot collide.
public struct PodAddressPool: Sendable {
    public let cidr: CIDR
    public let gateway: IPAddress
    private let first: UInt32
    private let last: UInt32
    public private(set) var assigned: [NetnsName: IPAddress] = [:]
    /// Where the search for a free address starts: just after the last one handed out.
    private var cursor: UInt32

    public init(cidr: CIDR) throws {
        guard let network = cidr.ipv4Network else {
            throw WeftError(.invalidArgument, "--pod-cidr \(cidr): must be an IPv4 block")
        }
        guard cidr.prefixLength <= 30 else {
            throw WeftError(.invalidArgument, "--pod-cidr \(cidr): too small; needs room for a gateway and at least one pod (/30 or larger)")
        }
        let size = UInt32(1) << UInt32(32 - cidr.prefixLength)
        self.cidr = CIDR("\(IPAddress.v4(network))/\(cidr.prefixLength)")!
        self.gateway = .v4(network + 1)
        self.first = network + 2
        self.last = network + size - 2
        self.cursor = network + 2
    }

    public var capacity: Int { Int(last - first + 1) }

    /// The address for `netns`: the one it already has, or the next free one after the last
    /// handed out, wrapping around (as Kubernetes' host-local IPAM does). A released address
    /// is reused only once the others have had their turn: callers' neighbour caches (ARP,
    /// NDP) still map a just-freed address to the old pod's MAC for seconds, and a new pod
    /// behind it would be unreachable meanwhile.
    public mutating func allocate(for netns: NetnsName) throws -> IPAddress {
        if let existing = assigned[netns] { return existing }
        let used = Set(assigned.values)
        var candidate = cursor
        for _ in 0..<capacity {
            let ip = IPAddress.v4(candidate)
            candidate = candidate == last ? first : candidate + 1
            if !used.contains(ip) {
                assigned[netns] = ip
                cursor = candidate
                return ip
            }
        }
        throw WeftError(.exhausted, "pod CIDR \(cidr) is exhausted (\(capacity) addresses, all in use)",
                        hint: "stop unused workloads (`weft get workloads`) or restart the agent with a larger --pod-cidr")
    }

    /// The IPv6 address paired with a pod's IPv4 one: the /64 (or shorter) prefix with the
    /// IPv4 address in the last 32 bits. No second pool, no way for the two to disagree.
    public static func ipv6(for v4: IPAddress, in prefix: CIDR) -> IPAddress? {
        guard case .v4(let host) = v4, prefix.family == .v6, prefix.prefixLength <= 96 else { return nil }
        var bytes = prefix.address.bytes
        bytes[12] = UInt8(host >> 24)
        bytes[13] = UInt8(host >> 16 & 0xff)
        bytes[14] = UInt8(host >> 8 & 0xff)
        bytes[15] = UInt8(host & 0xff)
        return .v6(bytes)
    }

    /// The bridge's IPv6 address: prefix::1.
    public static func ipv6Gateway(in prefix: CIDR) -> IPAddress? {
        guard prefix.family == .v6 else { return nil }
        var bytes = prefix.address.bytes
        for i in 8..<16 { bytes[i] = 0 }
        bytes[15] = 1
        return .v6(bytes)
    }

    /// Claims a known address for `netns` (restoring state after an agent restart).
    public mutating func reserve(_ ip: IPAddress, for netns: NetnsName) throws {
        guard case .v4(let v) = ip, v >= first, v <= last else {
            throw WeftError(.invalidArgument, "\(ip) is not a pod address of \(cidr)")
        }
        if let owner = assigned.first(where: { $0.value == ip && $0.key != netns })?.key {
            throw WeftError(.alreadyExists, "\(ip) is already assigned to netns \(owner)")
        }
        assigned[netns] = ip
        if v >= cursor { cursor = v == last ? first : v + 1 }  // restored ones: continue after them
    }

    public mutating func release(_ netns: NetnsName) {
        assigned[netns] = nil
    }
}
