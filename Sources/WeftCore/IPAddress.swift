import Foundation

/// An IPv4 or IPv6 address as bytes in network order. Parsed and printed here so that no
/// layer passes addresses around as bare strings.
public enum IPAddress: Hashable, Sendable, CustomStringConvertible, Codable {
    case v4(UInt32)
    case v6([UInt8])  // always 16 bytes

    public init?(_ text: String) {
        if text.contains(":") {
            guard let bytes = IPAddress.parseV6(text) else { return nil }
            self = .v6(bytes)
        } else {
            let parts = text.split(separator: ".", omittingEmptySubsequences: false)
            guard parts.count == 4 else { return nil }
            var value: UInt32 = 0
            for part in parts {
                guard !part.isEmpty, part.count <= 3, part.allSatisfy(\.isASCII),
                      let octet = UInt8(part), !(part.count > 1 && part.first == "0") else { return nil }
                value = value << 8 | UInt32(octet)
            }
            self = .v4(value)
        }
    }

    public init(v4Bytes b: [UInt8]) {
        precondition(b.count == 4)
        self = .v4(UInt32(b[0]) << 24 | UInt32(b[1]) << 16 | UInt32(b[2]) << 8 | UInt32(b[3]))
    }

    public var bytes: [UInt8] {
        switch self {
        case .v4(let v): return [UInt8(v >> 24), UInt8(v >> 16 & 0xff), UInt8(v >> 8 & 0xff), UInt8(v & 0xff)]
        case .v6(let b): return b
        }
    }

    public var family: IPFamily {
        if case .v4 = self { return .v4 }
        return .v6
    }

    public var isLoopback: Bool {
        switch self {
        case .v4(let v): return v >> 24 == 127
        case .v6(let b): return b == [UInt8](repeating: 0, count: 15) + [1]
        }
    }

    public var description: String {
        switch self {
        case .v4:
            return bytes.map(String.init).joined(separator: ".")
        case .v6(let b):
            var groups: [UInt16] = []
            for i in stride(from: 0, to: 16, by: 2) { groups.append(UInt16(b[i]) << 8 | UInt16(b[i + 1])) }
            // Compress the longest run of zero groups (RFC 5952).
            var best = (start: -1, len: 0), cur = (start: -1, len: 0)
            for (i, g) in groups.enumerated() {
                if g == 0 {
                    cur = cur.start < 0 ? (i, 1) : (cur.start, cur.len + 1)
                    if cur.len > best.len { best = cur }
                } else { cur = (-1, 0) }
            }
            let hex = groups.map { String($0, radix: 16) }
            if best.len < 2 { return hex.joined(separator: ":") }
            let head = hex[..<best.start].joined(separator: ":")
            let tail = hex[(best.start + best.len)...].joined(separator: ":")
            return head + "::" + tail
        }
    }

    private static func parseV6(_ text: String) -> [UInt8]? {
        let halves = text.components(separatedBy: "::")
        guard halves.count <= 2 else { return nil }
        func groups(_ s: String) -> [UInt16]? {
            if s.isEmpty { return [] }
            var out: [UInt16] = []
            for g in s.split(separator: ":", omittingEmptySubsequences: false) {
                guard !g.isEmpty, g.count <= 4, let v = UInt16(g, radix: 16) else { return nil }
                out.append(v)
            }
            return out
        }
        guard let head = groups(halves[0]) else { return nil }
        var all: [UInt16]
        if halves.count == 2 {
            guard let tail = groups(halves[1]), head.count + tail.count < 8 else { return nil }
            all = head + [UInt16](repeating: 0, count: 8 - head.count - tail.count) + tail
        } else {
            guard head.count == 8 else { return nil }
            all = head
        }
        return all.flatMap { [UInt8($0 >> 8), UInt8($0 & 0xff)] }
    }

    public init(from decoder: Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        guard let ip = IPAddress(text) else {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "not an IP address: \(text)"))
        }
        self = ip
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(description)
    }
}

public enum IPFamily: String, Sendable, CaseIterable, Codable {
    case v4, v6
}

/// An address block such as 10.231.0.0/16 or fd00::/8.
public struct CIDR: Hashable, Sendable, CustomStringConvertible, Codable {
    public let address: IPAddress
    public let prefixLength: Int

    public init?(_ text: String) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard let ip = IPAddress(String(parts[0])) else { return nil }
        let maxLen = ip.family == .v4 ? 32 : 128
        var len = maxLen
        if parts.count == 2 {
            guard let l = Int(parts[1]), (0...maxLen).contains(l) else { return nil }
            len = l
        } else if parts.count > 2 { return nil }
        self.address = ip
        self.prefixLength = len
    }

    public var family: IPFamily { address.family }
    public var description: String { "\(address)/\(prefixLength)" }

    public func contains(_ ip: IPAddress) -> Bool {
        guard ip.family == family else { return false }
        let a = address.bytes, b = ip.bytes
        var bits = prefixLength
        for i in 0..<a.count where bits > 0 {
            let take = min(8, bits)
            let mask = UInt8(truncatingIfNeeded: 0xff << (8 - take))
            if a[i] & mask != b[i] & mask { return false }
            bits -= take
        }
        return true
    }

    /// For IPv4 blocks: the network address, the usable host range excluded.
    public var ipv4Network: UInt32? {
        guard case .v4(let v) = address else { return nil }
        let mask: UInt32 = prefixLength == 0 ? 0 : ~UInt32(0) << (32 - prefixLength)
        return v & mask
    }

    public init(from decoder: Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        guard let c = CIDR(text) else {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "not a CIDR: \(text)"))
        }
        self = c
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(description)
    }
}
