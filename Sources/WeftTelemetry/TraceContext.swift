import Foundation

/// W3C Trace Context (`traceparent`, version 00). Pure.
public struct TraceContext: Equatable, Sendable {
    /// 16 bytes, not all zero.
    public var traceID: [UInt8]
    /// 8 bytes, not all zero: the span the next hop's spans are children of.
    public var spanID: [UInt8]
    public var sampled: Bool
    /// Trace Context Level 2's `random` flag (0x02): the trace ID's right 7 bytes are random.
    /// Kept along a trace; set on traces Weft starts (its IDs are uniformly random: SplitMix64
    /// seeded from the kernel's generator, see Tracer.randomBytes).
    public var random: Bool

    public init(traceID: [UInt8], spanID: [UInt8], sampled: Bool, random: Bool = false) {
        self.traceID = traceID
        self.spanID = spanID
        self.sampled = sampled
        self.random = random
    }

    /// Parses a `traceparent` header; nil when it is not a valid one (the spec then says:
    /// start a new trace, and drop `tracestate`). Versions above 00 are read as 00 when the
    /// first four fields are well formed (forward compatibility).
    public static func parse(_ header: String) -> TraceContext? {
        let text = header.trimmingCharacters(in: [" ", "\t"])
        let parts = text.split(separator: "-", omittingEmptySubsequences: false)
        guard parts.count >= 4, parts[0].count == 2, let version = UInt8(parts[0], radix: 16), version != 0xff,
              parts[0].allSatisfy(\.isHexLowercase) else { return nil }
        if version == 0 {
            guard parts.count == 4 else { return nil }
        } else if parts.count > 4, text.utf8.count > 55, text.utf8[text.utf8.index(text.utf8.startIndex, offsetBy: 55)] != UInt8(ascii: "-") {
            return nil
        }
        guard let trace = hex(parts[1], count: 16), let span = hex(parts[2], count: 8), parts[3].count == 2,
              parts[3].allSatisfy(\.isHexLowercase), let flags = UInt8(parts[3], radix: 16),
              trace.contains(where: { $0 != 0 }), span.contains(where: { $0 != 0 }) else { return nil }
        return TraceContext(traceID: trace, spanID: span, sampled: flags & 1 == 1, random: flags & 2 == 2)
    }

    /// `00-<trace id>-<span id>-<flags>`, written in one go (this runs for every request).
    public var traceparent: String {
        let flags = UInt8(ascii: "0") + (sampled ? 1 : 0) + (random ? 2 : 0)
        return String(unsafeUninitializedCapacity: 3 + traceID.count * 2 + 1 + spanID.count * 2 + 3) { out in
            var i = 0
            func put(_ b: UInt8) { out[i] = b; i += 1 }
            func hex(_ bytes: [UInt8]) {
                for b in bytes {
                    put(Self.digits[Int(b >> 4)])
                    put(Self.digits[Int(b & 0xf)])
                }
            }
            put(UInt8(ascii: "0")); put(UInt8(ascii: "0")); put(UInt8(ascii: "-"))
            hex(traceID)
            put(UInt8(ascii: "-"))
            hex(spanID)
            put(UInt8(ascii: "-")); put(UInt8(ascii: "0")); put(flags)
            return i
        }
    }

    public var traceIDHex: String { Self.hex(traceID) }

    private static let digits: [UInt8] = Array("0123456789abcdef".utf8)

    /// The same trace, with `span` as the parent the next hop sees.
    public func child(_ span: [UInt8]) -> TraceContext { TraceContext(traceID: traceID, spanID: span, sampled: sampled, random: random) }

    static func hex<S: StringProtocol>(_ s: S, count: Int) -> [UInt8]? {
        guard s.utf8.count == count * 2, s.allSatisfy(\.isHexLowercase) else { return nil }
        var out: [UInt8] = []
        out.reserveCapacity(count)
        var i = s.startIndex
        while i < s.endIndex {
            let j = s.index(i, offsetBy: 2)
            guard let b = UInt8(s[i..<j], radix: 16) else { return nil }
            out.append(b)
            i = j
        }
        return out
    }

    public static func hex(_ bytes: [UInt8]) -> String {
        String(unsafeUninitializedCapacity: bytes.count * 2) { out in
            var i = 0
            for b in bytes {
                out[i] = digits[Int(b >> 4)]
                out[i + 1] = digits[Int(b & 0xf)]
                i += 2
            }
            return i
        }
    }

    /// The context of a request from all its `traceparent` values: nil when there is none,
    /// more than one (ambiguous: the spec's test suite restarts the trace) or an invalid one.
    public static func parse(values: [String]) -> TraceContext? {
        values.count == 1 ? parse(values[0]) : nil
    }

    /// A request's `tracestate`, from all its header values in order (several headers are one
    /// comma-separated list), as one header value; nil when there is nothing to forward or it
    /// must be dropped whole: a member that breaks the grammar (key: a lowercase letter or
    /// digit, then up to 255 of a-z 0-9 _ - * / @; value: 1 to 256 printable characters, no
    /// comma or equals sign, not ending in a space) or more than 32 members. Empty members and
    /// the spaces around members are dropped; duplicate keys are kept as they came.
    public static func combinedTracestate(_ values: [String]) -> String? {
        var members: [Substring] = []
        for value in values {
            for raw in value.split(separator: ",", omittingEmptySubsequences: false) {
                let member = raw.drop { $0 == " " || $0 == "\t" }.reversed().drop { $0 == " " || $0 == "\t" }.reversed()
                if member.isEmpty { continue }
                let text = Substring(String(member))
                guard isValidMember(text) else { return nil }
                members.append(text)
                if members.count > 32 { return nil }
            }
        }
        return members.isEmpty ? nil : members.joined(separator: ",")
    }

    static func isValidMember(_ member: Substring) -> Bool {
        guard let eq = member.firstIndex(of: "=") else { return false }
        let key = member[..<eq].utf8, value = member[member.index(after: eq)...].utf8
        guard let first = key.first, key.count <= 256, isLowerAlnum(first),
              key.dropFirst().allSatisfy({ isLowerAlnum($0) || $0 == UInt8(ascii: "_") || $0 == UInt8(ascii: "-") || $0 == UInt8(ascii: "*")
                                           || $0 == UInt8(ascii: "/") || $0 == UInt8(ascii: "@") }) else { return false }
        guard let last = value.last, value.count <= 256, last != 0x20,
              value.allSatisfy({ $0 >= 0x20 && $0 <= 0x7e && $0 != UInt8(ascii: ",") && $0 != UInt8(ascii: "=") }) else { return false }
        return true
    }

    private static func isLowerAlnum(_ c: UInt8) -> Bool { (0x61...0x7a).contains(c) || (0x30...0x39).contains(c) }
}

extension Character {
    var isHexLowercase: Bool { ("0"..."9").contains(self) || ("a"..."f").contains(self) }
}
