import Foundation

/// W3C Trace Context (`traceparent`, version 00). Pure.
///
/// The IDs are kept as words (one made per request, so no arrays are allocated or freed for
/// them); `traceID` and `spanID` are their bytes, as the wire and OTLP carry them.
public struct TraceContext: Equatable, Sendable {
    /// The trace ID's 16 bytes as two big-endian words (`traceHigh`: bytes 0–7); not both zero.
    public var traceHigh: UInt64
    public var traceLow: UInt64
    /// The span ID's 8 bytes as a big-endian word (not zero): the span the next hop's spans
    /// are children of.
    public var span: UInt64
    public var sampled: Bool
    /// Trace Context Level 2's `random` flag (0x02): the trace ID's right 7 bytes are random.
    /// Kept along a trace; set on traces Weft starts (its IDs are uniformly random: SplitMix64
    /// seeded from the kernel's generator, see Tracer.newIDs).
    public var random: Bool

    /// 16 bytes.
    public var traceID: [UInt8] {
        get { Self.bytes(traceHigh) + Self.bytes(traceLow) }
        set { (traceHigh, traceLow) = (Self.word(newValue, at: 0), Self.word(newValue, at: 8)) }
    }

    /// 8 bytes.
    public var spanID: [UInt8] {
        get { Self.bytes(span) }
        set { span = Self.word(newValue, at: 0) }
    }

    /// From the IDs' bytes (16 and 8; shorter ones are read as if zero-padded on the right).
    public init(traceID: [UInt8], spanID: [UInt8], sampled: Bool, random: Bool = false) {
        self.init(traceHigh: Self.word(traceID, at: 0), traceLow: Self.word(traceID, at: 8), span: Self.word(spanID, at: 0),
                  sampled: sampled, random: random)
    }

    public init(traceHigh: UInt64, traceLow: UInt64, span: UInt64, sampled: Bool, random: Bool = false) {
        self.traceHigh = traceHigh
        self.traceLow = traceLow
        self.span = span
        self.sampled = sampled
        self.random = random
    }

    /// The big-endian word of `bytes[at..<at+8]` (missing bytes are zero).
    static func word(_ bytes: [UInt8], at: Int) -> UInt64 {
        var w: UInt64 = 0
        for i in at..<at + 8 { w = w << 8 | UInt64(i < bytes.count ? bytes[i] : 0) }
        return w
    }

    /// The 8 bytes of a big-endian word.
    public static func bytes(_ w: UInt64) -> [UInt8] {
        (0..<8).map { UInt8(truncatingIfNeeded: w >> (56 - 8 * $0)) }
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
        return String(unsafeUninitializedCapacity: 55) { out in
            out[0] = UInt8(ascii: "0"); out[1] = UInt8(ascii: "0"); out[2] = UInt8(ascii: "-")
            Self.writeHex(traceHigh, to: out, at: 3)
            Self.writeHex(traceLow, to: out, at: 19)
            out[35] = UInt8(ascii: "-")
            Self.writeHex(span, to: out, at: 36)
            out[52] = UInt8(ascii: "-"); out[53] = UInt8(ascii: "0"); out[54] = flags
            return 55
        }
    }

    /// The 32 hex digits of the trace ID.
    public var traceIDHex: String {
        String(unsafeUninitializedCapacity: 32) { out in
            Self.writeHex(traceHigh, to: out, at: 0)
            Self.writeHex(traceLow, to: out, at: 16)
            return 32
        }
    }

    /// `w`'s 16 lowercase hex digits into `out[at..<at+16]`.
    @inline(__always)
    static func writeHex(_ w: UInt64, to out: UnsafeMutableBufferPointer<UInt8>, at: Int) {
        storeHex(w, at: UnsafeMutableRawPointer(out.baseAddress! + at))
    }

    /// `w`'s 16 lowercase hex digits at `to` (two stores, no loop).
    @inline(__always)
    static func storeHex(_ w: UInt64, at to: UnsafeMutableRawPointer) {
        to.storeBytes(of: hexDigits(UInt32(truncatingIfNeeded: w >> 32)).littleEndian, as: UInt64.self)
        (to + 8).storeBytes(of: hexDigits(UInt32(truncatingIfNeeded: w)).littleEndian, as: UInt64.self)
    }

    /// The 8 lowercase hex digits of `v` as 8 ASCII bytes, the first (most significant
    /// nibble) in the lowest byte: each nibble is spread into its own byte, then turned into
    /// '0'…'9' or 'a'…'f' for all eight at once.
    @inline(__always)
    static func hexDigits(_ v: UInt32) -> UInt64 {
        var x = UInt64(v)
        x = (x | x << 16) & 0x0000_ffff_0000_ffff
        x = (x | x << 8) & 0x00ff_00ff_00ff_00ff
        x = (x | x << 4) & 0x0f0f_0f0f_0f0f_0f0f  // nibble i (from the least significant) in byte i
        x = x.byteSwapped  // the most significant nibble first
        let letters = ((x &+ 0x0606_0606_0606_0606) >> 4) & 0x0101_0101_0101_0101  // 1 where the nibble is 10…15
        return x &+ 0x3030_3030_3030_3030 &+ letters &* 0x27  // '0' + n, and 'a' - '0' - 10 more for letters
    }

    /// The lowercase hex digit of `v` (0...15).
    @inline(__always)
    static func digit(_ v: UInt8) -> UInt8 { v < 10 ? UInt8(ascii: "0") + v : UInt8(ascii: "a") - 10 + v }

    /// The same trace, with `span` as the parent the next hop sees.
    public func child(_ span: [UInt8]) -> TraceContext {
        TraceContext(traceHigh: traceHigh, traceLow: traceLow, span: Self.word(span, at: 0), sampled: sampled, random: random)
    }

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
                out[i] = digit(b >> 4)
                out[i + 1] = digit(b & 0xf)
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
