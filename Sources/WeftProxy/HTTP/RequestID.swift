import WeftTelemetry

/// `x-request-id` values: random version-4 UUIDs in lower-case text. Foundation's UUID()
/// opens /dev/urandom on every call here (an openat + close per request); this draws from a
/// splitmix64 sequence seeded once per connection from the system generator, which is
/// unpredictable enough for request correlation (they are not secrets).
struct RequestIDGenerator {
    /// The connection's draws (its trace IDs are drawn from it too: no lock per request).
    var draws: SplitMix64

    init() {
        var system = SystemRandomNumberGenerator()
        draws = SplitMix64(seed: system.next())
    }

    init(seed: UInt64) { draws = SplitMix64(seed: seed) }

    /// A uniform draw in [0, 1), for fault-injection percentages.
    mutating func nextUnit() -> Double {
        Double(next() >> 11) * 0x1.0p-53
    }

    private mutating func next() -> UInt64 { draws.next() }

    mutating func uuidString() -> String {
        var bytes = [UInt8](repeating: 0, count: 16)
        let a = next(), b = next()
        for i in 0..<8 {
            bytes[i] = UInt8(truncatingIfNeeded: a >> (8 * i))
            bytes[8 + i] = UInt8(truncatingIfNeeded: b >> (8 * i))
        }
        bytes[6] = (bytes[6] & 0x0F) | 0x40  // version 4
        bytes[8] = (bytes[8] & 0x3F) | 0x80  // RFC 4122 variant
        let hex: [UInt8] = Array("0123456789abcdef".utf8)
        var out = [UInt8]()
        out.reserveCapacity(36)
        for (i, byte) in bytes.enumerated() {
            if i == 4 || i == 6 || i == 8 || i == 10 { out.append(UInt8(ascii: "-")) }
            out.append(hex[Int(byte >> 4)])
            out.append(hex[Int(byte & 0x0F)])
        }
        return String(decoding: out, as: UTF8.self)
    }
}
