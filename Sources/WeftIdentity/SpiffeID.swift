import WeftCore

/// A SPIFFE ID, `spiffe://<trust-domain>/<path>`. Weft's workload identities have the path
/// `ns/<namespace>/sa/<service-account>`. Parsing follows the SPIFFE ID rules: lower-case
/// trust domain of [a-z0-9.-_], path segments of [A-Za-z0-9.-_] that are neither empty nor
/// `.`/`..`, no query, fragment, port or user info.
public struct SpiffeID: Hashable, Sendable, Codable, CustomStringConvertible, Comparable {
    public let trustDomain: String
    /// Path segments (without slashes).
    public let segments: [String]

    public init(trustDomain: String, segments: [String]) throws {
        try Self.checkTrustDomain(trustDomain)
        for s in segments { try Self.checkSegment(s) }
        self.trustDomain = trustDomain
        self.segments = segments
    }

    /// The identity of a workload: `spiffe://<td>/ns/<namespace>/sa/<service-account>`.
    public static func workload(trustDomain: String, namespace: String, serviceAccount: String) throws -> SpiffeID {
        try SpiffeID(trustDomain: trustDomain, segments: ["ns", namespace, "sa", serviceAccount])
    }

    public init(parsing text: String) throws {
        let prefix = "spiffe://"
        guard text.hasPrefix(prefix) else {
            throw WeftError(.invalidArgument, "'\(text)' is not a SPIFFE ID (must start with spiffe://)")
        }
        let rest = text.dropFirst(prefix.count)
        let domainEnd = rest.firstIndex(of: "/") ?? rest.endIndex
        let domain = String(rest[..<domainEnd])
        let path = rest[domainEnd...]
        var segments: [String] = []
        if !path.isEmpty {
            segments = path.dropFirst().split(separator: "/", omittingEmptySubsequences: false).map(String.init)
        }
        do {
            try self.init(trustDomain: domain, segments: segments)
        } catch let error as WeftError {
            throw WeftError(.invalidArgument, "'\(text)' is not a valid SPIFFE ID: \(error.message)")
        }
    }

    public var description: String {
        "spiffe://\(trustDomain)" + segments.map { "/" + $0 }.joined()
    }

    /// `ns/<namespace>/sa/<sa>` identities: the namespace, else nil.
    public var namespace: String? {
        segments.count == 4 && segments[0] == "ns" && segments[2] == "sa" ? segments[1] : nil
    }

    public var serviceAccount: String? {
        segments.count == 4 && segments[0] == "ns" && segments[2] == "sa" ? segments[3] : nil
    }

    public static func < (a: SpiffeID, b: SpiffeID) -> Bool { a.description < b.description }

    public init(from decoder: Decoder) throws {
        try self.init(parsing: try decoder.singleValueContainer().decode(String.self))
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(description)
    }

    static func checkTrustDomain(_ d: String) throws {
        guard !d.isEmpty else { throw WeftError(.invalidArgument, "the trust domain is empty") }
        guard d.utf8.count <= 255 else { throw WeftError(.invalidArgument, "the trust domain is longer than 255 bytes") }
        for c in d.utf8 {
            let ok = (c >= 0x61 && c <= 0x7a) || (c >= 0x30 && c <= 0x39) || c == 0x2e || c == 0x2d || c == 0x5f
            guard ok else {
                throw WeftError(.invalidArgument, "trust domain '\(d)' may only contain a-z, 0-9, '.', '-' and '_' (no upper case, port or user info)")
            }
        }
    }

    static func checkSegment(_ s: String) throws {
        guard !s.isEmpty else { throw WeftError(.invalidArgument, "a path segment is empty (double or trailing slash)") }
        guard s != "." && s != ".." else { throw WeftError(.invalidArgument, "path segments '.' and '..' are not allowed") }
        for c in s.utf8 {
            let ok = (c >= 0x61 && c <= 0x7a) || (c >= 0x41 && c <= 0x5a) || (c >= 0x30 && c <= 0x39) || c == 0x2e || c == 0x2d || c == 0x5f
            guard ok else { throw WeftError(.invalidArgument, "path segment '\(s)' may only contain letters, digits, '.', '-' and '_'") }
        }
    }
}
