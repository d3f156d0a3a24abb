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

    /// Parses `IPv4:PORT` or `[IPv6]:PORT` (what `description` prints).
    public init?(_ text: String) {
        var host = Substring(text)
        let portText: Substring
        if host.hasPrefix("[") {
            guard let close = host.firstIndex(of: "]"), host[host.index(after: close)...].hasPrefix(":") else { return nil }
            portText = host[host.index(close, offsetBy: 2)...]
            host = host[host.index(after: host.startIndex)..<close]
        } else {
            guard let colon = host.lastIndex(of: ":") else { return nil }
            portText = host[host.index(after: colon)...]
            host = host[..<colon]
            if host.contains(":") { return nil }
        }
        guard let ip = IPAddress(String(host)), let port = UInt16(portText), port > 0 else { return nil }
        self.init(ip: ip, port: port)
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
