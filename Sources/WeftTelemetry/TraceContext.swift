import Foundation

/// W3C Trace Context (`traceparent`, version 00). Pure.
public struct TraceContext: Equatable, Sendable {
    /// 16 bytes, not all zero.
    public var traceID: [UInt8]
    /// 8 bytes, not all zero: the span the next hop's spans are children of.
    public var spanID: [UInt8]
    public var sampled: Bool

    public init(traceID: [UInt8], spanID: [UInt8], sampled: Bool) {
        self.traceID = traceID
        self.spanID = spanID
        self.sampled = sampled
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
        return TraceContext(traceID: trace, spanID: span, sampled: flags & 1 == 1)
    }

    public var traceparent: String { "00-\(Self.hex(traceID))-\(Self.hex(spanID))-\(sampled ? "01" : "00")" }
    public var traceIDHex: String { Self.hex(traceID) }

    /// The same trace, with `span` as the parent the next hop sees.
    public func child(_ span: [UInt8]) -> TraceContext { TraceContext(traceID: traceID, spanID: span, sampled: sampled) }

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
        let digits = Array("0123456789abcdef".utf8)
        var out = [UInt8]()
        out.reserveCapacity(bytes.count * 2)
        for b in bytes {
            out.append(digits[Int(b >> 4)])
            out.append(digits[Int(b & 0xf)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// `tracestate` kept only when it fits the spec's limits (at most 32 list members, 512
    /// characters); otherwise dropped rather than forwarded malformed.
    public static func validTracestate(_ value: String) -> String? {
        guard value.utf8.count <= 512 else { return nil }
        let members = value.split(separator: ",").map { $0.trimmingCharacters(in: [" ", "\t"]) }.filter { !$0.isEmpty }
        guard members.count <= 32, members.allSatisfy({ $0.contains("=") }) else { return nil }
        return members.joined(separator: ",")
    }
}

extension Character {
    var isHexLowercase: Bool { ("0"..."9").contains(self) || ("a"..."f").contains(self) }
}
