import Foundation
import Glibc
import WeftCore

/// The access-log writer's output: a growing byte buffer that JSON objects and text lines
/// are written straight into, then handed to `write(2)` in one piece per batch.
///
/// It runs once per logged request, so it is written for speed: bytes go through a raw
/// pointer (one capacity check per field, not per byte, and no copy-on-write checks),
/// strings are escaped per RFC 8259 only where they must be, integers are written digit by
/// digit and timestamps reuse the date and time of the previous line when the second is the
/// same. Noncopyable: it owns its memory, so handing it to another thread (the writer swaps
/// buffers with the data path) hands over the memory too.
struct LogLineBuffer: ~Copyable, @unchecked Sendable {
    private var base: UnsafeMutablePointer<UInt8>
    private var capacity: Int
    private(set) var count = 0
    /// No field written yet in the current object (no comma before the next).
    private var first = true
    /// The last second formatted (`YYYY-MM-DDTHH:MM:SS`) and its text.
    private var cachedSecond: time_t = -1
    private var cachedPrefix: [UInt8] = []

    init(capacity: Int = 64 * 1024) {
        self.capacity = max(capacity, 64)
        base = .allocate(capacity: self.capacity)
    }

    deinit { base.deallocate() }

    /// Room for `n` more bytes.
    @inline(__always)
    private mutating func reserve(_ n: Int) {
        if count + n > capacity { grow(to: count + n) }
    }

    private mutating func grow(to needed: Int) {
        var size = capacity * 2
        while size < needed { size *= 2 }
        let bigger = UnsafeMutablePointer<UInt8>.allocate(capacity: size)
        bigger.update(from: base, count: count)
        base.deallocate()
        base = bigger
        capacity = size
    }

    @inline(__always)
    private mutating func put(_ b: UInt8) {
        base[count] = b
        count += 1
    }

    /// Copies `n` bytes (room reserved). Most fields are short (keys, methods, addresses):
    /// up to 32 bytes are copied as a few overlapping words, in line, instead of a call to
    /// memmove each.
    @inline(__always)
    private mutating func copy(_ from: UnsafePointer<UInt8>, _ n: Int) {
        let to = UnsafeMutableRawPointer(base + count)
        let src = UnsafeRawPointer(from)
        @inline(__always) func word<T: FixedWidthInteger>(_ t: T.Type, _ at: Int) {
            to.storeBytes(of: src.loadUnaligned(fromByteOffset: at, as: T.self), toByteOffset: at, as: T.self)
        }
        switch n {
        case 0: break
        case 1: to.storeBytes(of: from[0], as: UInt8.self)
        case 2...3: word(UInt16.self, 0); word(UInt16.self, n - 2)
        case 4...7: word(UInt32.self, 0); word(UInt32.self, n - 4)
        case 8...16: word(UInt64.self, 0); word(UInt64.self, n - 8)
        case 17...32: word(UInt64.self, 0); word(UInt64.self, 8); word(UInt64.self, n - 16); word(UInt64.self, n - 8)
        default: (base + count).update(from: from, count: n)
        }
        count += n
    }

    /// The bytes written so far.
    func withBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try body(UnsafeRawBufferPointer(start: base, count: count))
    }

    var bytes: [UInt8] { withBytes { Array($0) } }

    /// Empties the buffer (its memory is kept for the next batch; one that grew past
    /// `keep` bytes, a burst, is given back).
    mutating func removeAll(keep: Int = 1 << 20) {
        count = 0
        first = true
        if capacity > keep {
            base.deallocate()
            capacity = keep
            base = .allocate(capacity: keep)
        }
    }

    // MARK: - raw bytes and text

    mutating func append(_ b: UInt8) {
        reserve(1)
        put(b)
    }

    mutating func append(_ bytes: UnsafeRawBufferPointer) {
        guard let from = bytes.baseAddress, !bytes.isEmpty else { return }
        reserve(bytes.count)
        copy(from.assumingMemoryBound(to: UInt8.self), bytes.count)
    }

    mutating func append(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { append($0) }
    }

    mutating func append(_ s: StaticString) {
        s.withUTF8Buffer { append(UnsafeRawBufferPointer($0)) }
    }

    mutating func append(_ s: String) {
        var s = s
        s.withUTF8 { append(UnsafeRawBufferPointer($0)) }
    }

    // MARK: - JSON objects

    mutating func openObject() {
        append(UInt8(ascii: "{"))
        first = true
    }

    mutating func closeObject() {
        append(UInt8(ascii: "}"))
    }

    /// `,"k":` (the comma from the second field on). Reserves `extra` bytes more for the value.
    @inline(__always)
    private mutating func key(_ k: StaticString, extra: Int) {
        reserve(k.utf8CodeUnitCount + 4 + extra)
        if !first { put(UInt8(ascii: ",")) }
        first = false
        put(UInt8(ascii: "\""))
        copy(k.utf8Start, k.utf8CodeUnitCount)
        put(UInt8(ascii: "\""))
        put(UInt8(ascii: ":"))
    }

    /// Fields rendered before (`"a":1,"b":2`, see `AccessLogPeers`), copied as they are.
    mutating func fields(_ rendered: [UInt8]) {
        guard !rendered.isEmpty else { return }
        if !first { append(UInt8(ascii: ",")) }
        first = false
        append(rendered)
    }

    mutating func int(_ k: StaticString, _ v: Int) {
        key(k, extra: 20)
        digits(v)
    }

    /// A string field, left out when nil.
    mutating func string(_ k: StaticString, _ v: String?) {
        guard var v else { return }
        v.withUTF8 { utf8 in
            key(k, extra: utf8.count + 2)
            put(UInt8(ascii: "\""))
            escaped(utf8)
            reserve(1)
            put(UInt8(ascii: "\""))
        }
    }

    /// Whether a byte is a control character, `"` or `\`: eight bytes at a time (the usual
    /// "has a byte less than n / equal to c" word tests, exact for "any"), then the rest.
    @inline(__always)
    static func needsEscaping(_ utf8: UnsafeBufferPointer<UInt8>) -> Bool {
        guard let start = utf8.baseAddress else { return false }
        let raw = UnsafeRawPointer(start), n = utf8.count
        let ones: UInt64 = 0x0101_0101_0101_0101, highs: UInt64 = 0x8080_8080_8080_8080
        var i = 0
        while i + 8 <= n {
            let x = raw.loadUnaligned(fromByteOffset: i, as: UInt64.self)
            let quote = x ^ (ones &* 0x22), backslash = x ^ (ones &* 0x5c)
            let found = ((x &- ones &* 0x20) & ~x) | ((quote &- ones) & ~quote) | ((backslash &- ones) & ~backslash)
            if found & highs != 0 { return true }
            i += 8
        }
        while i < n {
            let b = utf8[i]
            if b < 0x20 || b == 0x22 || b == 0x5c { return true }
            i += 1
        }
        return false
    }

    /// `utf8` as the inside of a JSON string: copied in bulk unless a byte must be escaped.
    private mutating func escaped(_ utf8: UnsafeBufferPointer<UInt8>) {
        guard Self.needsEscaping(utf8) else {
            if let from = utf8.baseAddress, !utf8.isEmpty {
                reserve(utf8.count)
                copy(from, utf8.count)
            }
            return
        }
        reserve(utf8.count * 6)
        for b in utf8 {
            switch b {
            case 0x22: put(0x5c); put(0x22)
            case 0x5c: put(0x5c); put(0x5c)
            case 0x0a: put(0x5c); put(UInt8(ascii: "n"))
            case 0x0d: put(0x5c); put(UInt8(ascii: "r"))
            case 0x09: put(0x5c); put(UInt8(ascii: "t"))
            case ..<0x20:
                put(0x5c); put(UInt8(ascii: "u")); put(0x30); put(0x30)
                put(Self.hexDigit(b >> 4)); put(Self.hexDigit(b & 0xf))
            default: put(b)
            }
        }
    }

    /// RFC 3339 UTC with milliseconds, e.g. `"2026-11-24T17:11:23.890Z"`.
    mutating func time(_ k: StaticString, _ d: Date) {
        key(k, extra: 2)
        put(UInt8(ascii: "\""))
        timestamp(d)
        reserve(1)
        put(UInt8(ascii: "\""))
    }

    /// The timestamp alone (no quotes): the text format uses it too.
    mutating func timestamp(_ d: Date) {
        // Whole seconds by truncation (floor for the dates a clock gives; libm's floor was a
        // call per line), clamped so that no Date can trap the conversion.
        let since1970 = d.timeIntervalSince1970
        let clamped = since1970.isFinite ? min(max(since1970, 0), 253_402_300_799) : 0  // up to 9999-12-31T23:59:59
        var t = time_t(clamped)
        let ms = min(max(Int((clamped - Double(t)) * 1000), 0), 999)
        if t != cachedSecond {
            var tm = Glibc.tm()
            gmtime_r(&t, &tm)
            var p: [UInt8] = []
            p.reserveCapacity(19)
            func two(_ v: Int32) { p.append(UInt8(ascii: "0") + UInt8(v / 10 % 10)); p.append(UInt8(ascii: "0") + UInt8(v % 10)) }
            let year = Int(tm.tm_year) + 1900
            for divisor in [1000, 100, 10, 1] { p.append(UInt8(ascii: "0") + UInt8(year / divisor % 10)) }
            p.append(UInt8(ascii: "-")); two(tm.tm_mon + 1); p.append(UInt8(ascii: "-")); two(tm.tm_mday)
            p.append(UInt8(ascii: "T")); two(tm.tm_hour); p.append(UInt8(ascii: ":")); two(tm.tm_min)
            p.append(UInt8(ascii: ":")); two(tm.tm_sec)
            cachedSecond = t
            cachedPrefix = p
        }
        append(cachedPrefix)
        reserve(5)
        put(UInt8(ascii: "."))
        put(UInt8(ascii: "0") + UInt8(ms / 100))
        put(UInt8(ascii: "0") + UInt8(ms / 10 % 10))
        put(UInt8(ascii: "0") + UInt8(ms % 10))
        put(UInt8(ascii: "Z"))
    }

    /// `"1.2.3.4:80"` or `"[::1]:80"`, left out when nil.
    mutating func address(_ k: StaticString, _ d: OriginalDestination?) {
        guard let d else { return }
        guard case .v4(let v) = d.ip else { return string(k, d.description) }
        key(k, extra: 24)
        put(UInt8(ascii: "\""))
        digits(Int(v >> 24))
        put(UInt8(ascii: "."))
        digits(Int(v >> 16 & 0xff))
        put(UInt8(ascii: "."))
        digits(Int(v >> 8 & 0xff))
        put(UInt8(ascii: "."))
        digits(Int(v & 0xff))
        put(UInt8(ascii: ":"))
        digits(Int(d.port))
        put(UInt8(ascii: "\""))
    }

    /// A trace's ID as 32 lowercase hex digits, left out when nil.
    mutating func traceID(_ k: StaticString, _ trace: TraceContext?) {
        guard let trace else { return }
        key(k, extra: 34)
        put(UInt8(ascii: "\""))
        hexWord(trace.traceHigh)
        hexWord(trace.traceLow)
        put(UInt8(ascii: "\""))
    }

    /// `w`'s 16 lowercase hex digits (room reserved).
    @inline(__always)
    private mutating func hexWord(_ w: UInt64) {
        TraceContext.storeHex(w, at: UnsafeMutableRawPointer(base + count))
        count += 16
    }

    /// Decimal digits of `v` (room for 20 must be reserved), written in place from the last.
    @inline(__always)
    private mutating func digits(_ v: Int) {
        if v < 0 { put(UInt8(ascii: "-")) }
        var rest = v.magnitude
        var n = 1
        var t = rest
        while t >= 10 {
            t /= 10
            n += 1
        }
        var i = count + n
        repeat {
            i -= 1
            base[i] = UInt8(ascii: "0") + UInt8(rest % 10)
            rest /= 10
        } while rest > 0
        count += n
    }

    /// The lowercase hex digit of `v` (0...15).
    @inline(__always)
    private static func hexDigit(_ v: UInt8) -> UInt8 { v < 10 ? UInt8(ascii: "0") + v : UInt8(ascii: "a") - 10 + v }
}
