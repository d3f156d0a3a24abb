/// The name of a network namespace under /run/netns. Restricted to characters that are safe
/// in paths, iptables comments and log lines.
public struct NetnsName: ValidatedName, Comparable {
    public let rawValue: String

    public init(_ raw: String) throws {
        guard !raw.isEmpty, raw.count <= 64,
              raw.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" || $0 == ".") }),
              raw != ".", raw != ".."
        else {
            throw WeftError(.invalidArgument,
                            "invalid netns name '\(raw)': use 1-64 letters, digits, '-', '_' or '.'")
        }
        self.rawValue = raw
    }

    public var path: String { "/run/netns/\(rawValue)" }
    public static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }
}

/// A service name: a DNS label (RFC 1123), as Istio and Kubernetes require.
public struct ServiceName: ValidatedName {
    public let rawValue: String

    public init(_ raw: String) throws {
        guard DNSLabel.isValid(raw) else {
            throw WeftError(.invalidArgument,
                            "invalid service name '\(raw)': use a DNS label (lowercase letters, digits, '-', at most 63)")
        }
        self.rawValue = raw
    }

}

/// Application protocol named on a service port (`--port 80:3000/http`).
public enum PortProtocol: String, Sendable, Codable, CaseIterable {
    case tcp, http, http2, grpc, tls
}

/// `P[:TARGET][/PROTO]`: the service port callers use, the port the app listens on, and the
/// protocol. Without a target the app listens on the service port; without a protocol it is
/// sniffed (`tcp` disables sniffing).
public struct PortMapping: Hashable, Sendable, Codable, CustomStringConvertible {
    public let port: UInt16
    public let targetPort: UInt16
    public let proto: PortProtocol?

    public init(port: UInt16, targetPort: UInt16? = nil, proto: PortProtocol? = nil) {
        self.port = port
        self.targetPort = targetPort ?? port
        self.proto = proto
    }

    public init(parsing text: String) throws {
        var rest = Substring(text)
        var proto: PortProtocol?
        if let slash = rest.firstIndex(of: "/") {
            let name = rest[rest.index(after: slash)...].lowercased()
            guard let p = PortProtocol(rawValue: name) else {
                let known = PortProtocol.allCases.map(\.rawValue).joined(separator: ", ")
                throw WeftError(.invalidArgument, "--port \(text): unknown protocol '\(name)' (known: \(known))")
            }
            proto = p
            rest = rest[..<slash]
        }
        let parts = rest.split(separator: ":", omittingEmptySubsequences: false)
        func number(_ s: Substring) throws -> UInt16 {
            guard let n = UInt16(s), n > 0 else {
                throw WeftError(.invalidArgument, "--port \(text): '\(s)' is not a port number (1-65535)")
            }
            return n
        }
        guard parts.count == 1 || parts.count == 2 else {
            throw WeftError(.invalidArgument, "--port \(text): expected PORT[:TARGET][/PROTO]")
        }
        self.init(port: try number(parts[0]), targetPort: parts.count == 2 ? try number(parts[1]) : nil, proto: proto)
    }

    public var description: String {
        var s = "\(port)"
        if targetPort != port { s += ":\(targetPort)" }
        if let proto { s += "/\(proto.rawValue)" }
        return s
    }
}

/// A `key=value` workload label (`--label version=v2`).
public struct Label: Hashable, Sendable {
    public let key: String
    public let value: String

    public init(parsing text: String) throws {
        guard let eq = text.firstIndex(of: "="), eq != text.startIndex else {
            throw WeftError(.invalidArgument, "--label \(text): expected KEY=VALUE")
        }
        key = String(text[..<eq])
        value = String(text[text.index(after: eq)...])
        let okKey = key.count <= 63 && key.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || "-_./".contains($0)) }
        guard okKey else { throw WeftError(.invalidArgument, "--label \(text): invalid key '\(key)'") }
    }
}

/// RFC 1123 labels, as Kubernetes and Istio require for service and namespace names.
enum DNSLabel {
    static func isValid(_ s: String) -> Bool {
        !s.isEmpty && s.count <= 63
            && s.allSatisfy({ $0.isASCII && ($0.isLowercase || $0.isNumber || $0 == "-") })
            && s.first != "-" && s.last != "-"
    }
}

/// A string checked once at construction (netns, service and namespace names): encoded as
/// the bare string, decoded through the same check, printed as itself.
public protocol ValidatedName: Hashable, Sendable, Codable, CustomStringConvertible {
    var rawValue: String { get }
    init(_ raw: String) throws
}

extension ValidatedName {
    public init(from decoder: Decoder) throws {
        try self.init(decoder.singleValueContainer().decode(String.self))
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(rawValue)
    }

    public var description: String { rawValue }
}

/// A service account name as it appears in an identity (…/sa/NAME): a DNS-label-like
/// name, so it is a valid SPIFFE path segment.
public enum ServiceAccountName {
    public static func check(_ name: String) throws -> String {
        let ok = !name.isEmpty && name.utf8.count <= 63 && name.utf8.allSatisfy {
            ($0 >= 0x61 && $0 <= 0x7a) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x2d || $0 == 0x2e
        }
        guard ok else {
            throw WeftError(.invalidArgument, "--service-account \(name): use 1-63 lower-case letters, digits, '-' or '.'")
        }
        return name
    }
}
