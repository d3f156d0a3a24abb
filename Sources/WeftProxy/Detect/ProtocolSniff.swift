/// What an app's first bytes say about the protocol it speaks. Pure: a table of byte
/// strings in the unit tests pins every case.
///
/// Only the client's first bytes are looked at, and only until they decide: an HTTP/1
/// request line (`METHOD SP target SP HTTP/1.x CRLF`), the HTTP/2 prior-knowledge preface,
/// a TLS handshake record, or anything else (opaque). Server-first protocols never reach
/// this: the upstream is dialled at once and its first bytes end detection (see
/// ProtocolDetector).
public enum SniffedProtocol: String, Sendable, Codable, CaseIterable {
    case http1 = "http/1.1"
    case http2 = "h2c"
    case tls
    case opaque
}

public enum SniffResult: Equatable, Sendable {
    case needMore
    case detected(SniffedProtocol)
}

public enum ProtocolSniff {
    static let http2Preface = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8)
    /// A request line longer than this is not worth waiting for: whatever it is goes opaque.
    public static let maxRequestLine = 8 * 1024
    static let maxMethodLength = 20

    public static func classify(_ bytes: some Collection<UInt8>) -> SniffResult {
        let b = Array(bytes.prefix(maxRequestLine + 1))
        guard let first = b.first else { return .needMore }
        // TLS: a handshake record (0x16) of version 3.x.
        if first == 0x16 {
            guard b.count >= 2 else { return .needMore }
            return .detected(b[1] == 0x03 ? .tls : .opaque)
        }
        // HTTP/2 prior knowledge: the whole 24-byte preface, or a prefix of it so far.
        let n = min(b.count, http2Preface.count)
        if b[0..<n].elementsEqual(http2Preface[0..<n]) {
            return n == http2Preface.count ? .detected(.http2) : .needMore
        }
        return requestLine(b)
    }

    /// HTTP/1: a method token (upper-case letters, `-`, `_`), a space, a target without
    /// spaces, a space, `HTTP/1.0` or `HTTP/1.1`, CRLF.
    private static func requestLine(_ b: [UInt8]) -> SniffResult {
        var i = 0
        while i < b.count, isMethodByte(b[i]) {
            i += 1
            if i > maxMethodLength { return .detected(.opaque) }
        }
        guard i < b.count else { return .needMore }  // still inside what could be a method
        guard i > 0, b[i] == UInt8(ascii: " ") else { return .detected(.opaque) }
        guard let lf = b.firstIndex(of: UInt8(ascii: "\n")) else {
            return b.count > maxRequestLine ? .detected(.opaque) : .needMore
        }
        guard lf >= 1, b[lf - 1] == UInt8(ascii: "\r") else { return .detected(.opaque) }
        let line = b[(i + 1)..<(lf - 1)]
        let parts = line.split(separator: UInt8(ascii: " "), omittingEmptySubsequences: false)
        guard parts.count == 2, !parts[0].isEmpty else { return .detected(.opaque) }
        let version = Array(parts[1])
        if version == Array("HTTP/1.1".utf8) || version == Array("HTTP/1.0".utf8) { return .detected(.http1) }
        return .detected(.opaque)
    }

    private static func isMethodByte(_ c: UInt8) -> Bool {
        (c >= UInt8(ascii: "A") && c <= UInt8(ascii: "Z")) || c == UInt8(ascii: "-") || c == UInt8(ascii: "_")
    }
}
