import WeftCore

/// The parts of a DNS message (RFC 1035) the mesh needs: the header and the single question
/// of a query, and answers built from virtual IPs. Pure and bounds-checked: any byte string
/// from the network either parses or is rejected, never traps.
public struct DNSQuery: Equatable, Sendable {
    public let id: UInt16
    public let flags: UInt16
    /// Lowercased, without the trailing dot ("web.shop.svc.cluster.local").
    public let name: String
    public let type: UInt16
    public let qclass: UInt16
    /// The question section exactly as received, echoed in answers.
    public let questionBytes: ArraySlice<UInt8>

    public static let typeA: UInt16 = 1
    public static let typeAAAA: UInt16 = 28
    public static let typeANY: UInt16 = 255

    public enum ParseError: Error, Equatable {
        case tooShort, notAQuery, questionCount(UInt16), badName, badLabel
    }

    public init(parsing bytes: [UInt8]) throws {
        guard bytes.count >= 12 else { throw ParseError.tooShort }
        id = UInt16(bytes[0]) << 8 | UInt16(bytes[1])
        flags = UInt16(bytes[2]) << 8 | UInt16(bytes[3])
        guard flags & 0x8000 == 0, (flags >> 11) & 0xF == 0 else { throw ParseError.notAQuery }  // QR=0, OPCODE=QUERY
        let qdcount = UInt16(bytes[4]) << 8 | UInt16(bytes[5])
        guard qdcount == 1 else { throw ParseError.questionCount(qdcount) }
        var offset = 12
        var labels: [String] = []
        var total = 0
        while true {
            guard offset < bytes.count else { throw ParseError.badName }
            let length = Int(bytes[offset])
            offset += 1
            if length == 0 { break }
            // Compression pointers never appear in a query's only question; refuse them.
            guard length <= 63, offset + length <= bytes.count else { throw ParseError.badLabel }
            total += length + 1
            guard total <= 255 else { throw ParseError.badName }
            let label = bytes[offset..<offset + length]
            guard label.allSatisfy({ $0 > 0x20 && $0 < 0x7f && $0 != UInt8(ascii: ".") }) else { throw ParseError.badLabel }
            labels.append(String(decoding: label, as: UTF8.self).lowercased())
            offset += length
        }
        guard offset + 4 <= bytes.count else { throw ParseError.tooShort }
        type = UInt16(bytes[offset]) << 8 | UInt16(bytes[offset + 1])
        qclass = UInt16(bytes[offset + 2]) << 8 | UInt16(bytes[offset + 3])
        questionBytes = bytes[12..<offset + 4]
        name = labels.joined(separator: ".")
    }

    public enum RCode: UInt16 {
        case noError = 0, formErr = 1, servFail = 2, nxDomain = 3
    }

    /// An authoritative answer to this query. `addresses` are the records of the asked type.
    public func response(rcode: RCode, addresses: [IPAddress], ttl: UInt32 = 30) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(12 + questionBytes.count + addresses.count * 28)
        let rflags: UInt16 = 0x8000 | 0x0400 | (flags & 0x0100) | 0x0080 | rcode.rawValue  // QR AA RD RA
        func put16(_ v: UInt16) { out.append(UInt8(v >> 8)); out.append(UInt8(v & 0xff)) }
        put16(id); put16(rflags); put16(1); put16(UInt16(addresses.count)); put16(0); put16(0)
        out.append(contentsOf: questionBytes)
        for ip in addresses {
            put16(0xC00C)  // the name: a pointer to the question
            put16(ip.family == .v4 ? Self.typeA : Self.typeAAAA)
            put16(1)
            put16(UInt16(ttl >> 16)); put16(UInt16(ttl & 0xffff))
            let data = ip.bytes
            put16(UInt16(data.count))
            out.append(contentsOf: data)
        }
        return out
    }

    /// FORMERR for a message whose header could be read but whose question could not.
    public static func formatError(for bytes: [UInt8]) -> [UInt8]? {
        guard bytes.count >= 12, bytes[2] & 0x80 == 0 else { return nil }
        return [bytes[0], bytes[1], 0x80 | (bytes[2] & 0x01), 0x80 | 0x01, 0, 0, 0, 0, 0, 0, 0, 0]
    }
}

/// What the DNS proxy does with one query.
public enum DNSDecision: Equatable, Sendable {
    /// Answer from the mesh (authoritative).
    case answer([UInt8])
    /// Not a mesh name: ask the upstream resolver.
    case forward
    /// Unreadable: nothing to answer.
    case drop
}

public enum DNSAnswers {
    /// The mesh's authoritative zone: names there that are not services get NXDOMAIN here,
    /// never a trip upstream.
    static let clusterSuffix = ".svc.cluster.local"

    /// Which service a name means, from a caller in `namespace` (Kubernetes/Istio search
    /// semantics): `svc` (caller's namespace), `svc.ns`, `svc.ns.svc`, `svc.ns.svc.cluster.local`.
    public static func candidates(for name: String, callerNamespace: MeshNamespace) -> [(name: String, namespace: String)] {
        var n = name
        if n.hasSuffix(clusterSuffix) { n.removeLast(clusterSuffix.count) } else if n.hasSuffix(".svc") { n.removeLast(4) }
        let parts = n.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
        switch parts.count {
        case 1: return [(parts[0], callerNamespace.rawValue)]
        case 2: return [(parts[0], parts[1])]
        default: return []
        }
    }

    public static func decide(_ bytes: [UInt8], callerNamespace: MeshNamespace,
                              lookup: (String, String) -> (vip: IPAddress, vip6: IPAddress?)?) -> DNSDecision {
        let query: DNSQuery
        do { query = try DNSQuery(parsing: bytes) } catch {
            return DNSQuery.formatError(for: bytes).map(DNSDecision.answer) ?? .drop
        }
        guard query.qclass == 1 else { return .forward }
        var found: (vip: IPAddress, vip6: IPAddress?)?
        for candidate in candidates(for: query.name, callerNamespace: callerNamespace) {
            if let hit = lookup(candidate.name, candidate.namespace) { found = hit; break }
        }
        guard let found else {
            return query.name.hasSuffix(clusterSuffix) || query.name == "cluster.local"
                ? .answer(query.response(rcode: .nxDomain, addresses: []))
                : .forward
        }
        var addresses: [IPAddress] = []
        if query.type == DNSQuery.typeA || query.type == DNSQuery.typeANY { addresses.append(found.vip) }
        if (query.type == DNSQuery.typeAAAA || query.type == DNSQuery.typeANY), let v6 = found.vip6 { addresses.append(v6) }
        return .answer(query.response(rcode: .noError, addresses: addresses))
    }
}
