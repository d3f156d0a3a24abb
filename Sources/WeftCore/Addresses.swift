/// Where an intercepted connection was really going, read with SO_ORIGINAL_DST. A separate
/// type from a plain socket address so it cannot be swapped with the client's address.
public struct OriginalDestination: Hashable, Sendable, CustomStringConvertible {
    public let ip: IPAddress
    public let port: UInt16

    public init(ip: IPAddress, port: UInt16) {
        self.ip = ip
        self.port = port
    }

    public var description: String {
        ip.family == .v6 ? "[\(ip)]:\(port)" : "\(ip):\(port)"
    }
}

/// The peer that connected to a capture listener.
public struct ClientAddress: Hashable, Sendable, CustomStringConvertible {
    public let ip: IPAddress
    public let port: UInt16

    public init(ip: IPAddress, port: UInt16) {
        self.ip = ip
        self.port = port
    }

    public var description: String {
        ip.family == .v6 ? "[\(ip)]:\(port)" : "\(ip):\(port)"
    }
}
