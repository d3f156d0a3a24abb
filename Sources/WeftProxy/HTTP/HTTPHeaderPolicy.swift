import NIOHTTP1
import WeftCore

/// What the L7 path does to a request head before it goes upstream. Pure: every rule is a
/// table test. Refuses the request-smuggling shapes (RFC 9112 §6.1, §6.3) instead of
/// guessing, strips hop-by-hop headers (RFC 9110 §7.6.1), and adds the mesh's own headers.
public enum HTTPHeaderPolicy {
    public enum Verdict: Equatable {
        case forward(HTTPRequestHead)
        case reject(HTTPResponseStatus, String)
    }

    public static let maxHeaderCount = 100
    public static let maxHeaderBytes = 64 * 1024


    public static func request(_ head: HTTPRequestHead, client: IPAddress?, requestID: () -> String) -> Verdict {
        let h = head.headers
        guard h.count <= maxHeaderCount else {
            return .reject(.requestHeaderFieldsTooLarge, "more than \(maxHeaderCount) header fields")
        }
        // One pass over the headers gathers what the rules below look at (most requests
        // carry none of them: nothing is allocated then).
        var bytes = 0
        var lengthValues: [String] = [], codingValues: [String] = [], upgradeValues: [String] = [], teValues: [String] = []
        var forwardedFor: [String] = []
        var http2Settings = false, forwardedProto = false, firstRequestID: String?
        for (name, value) in h {
            bytes += name.utf8.count + value.utf8.count + 4
            switch name.utf8.count {
            case 2 where asciiCaseInsensitiveEquals(name, "te"): teValues.append(value)
            case 7 where asciiCaseInsensitiveEquals(name, "upgrade"): upgradeValues.append(value)
            case 12 where asciiCaseInsensitiveEquals(name, "x-request-id"): if firstRequestID == nil { firstRequestID = value }
            case 14 where asciiCaseInsensitiveEquals(name, "content-length"): lengthValues.append(value)
            case 14 where asciiCaseInsensitiveEquals(name, "http2-settings"): http2Settings = true
            case 15 where asciiCaseInsensitiveEquals(name, "x-forwarded-for"): forwardedFor.append(value)
            case 17 where asciiCaseInsensitiveEquals(name, "transfer-encoding"): codingValues.append(value)
            case 17 where asciiCaseInsensitiveEquals(name, "x-forwarded-proto"): forwardedProto = true
            default: break
            }
        }
        guard bytes <= maxHeaderBytes else {
            return .reject(.requestHeaderFieldsTooLarge, "headers larger than \(maxHeaderBytes) bytes")
        }
        let lengths = lengthValues.flatMap { $0.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) } }
        let codings = codingValues.flatMap { $0.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces).lowercased() } }
        if !lengths.isEmpty && !codings.isEmpty {
            return .reject(.badRequest, "both Content-Length and Transfer-Encoding (request smuggling)")
        }
        if !lengths.isEmpty {
            guard lengths.allSatisfy({ !$0.isEmpty && $0.allSatisfy(\.isASCII) && $0.allSatisfy(\.isNumber) }), Set(lengths).count == 1 else {
                return .reject(.badRequest, "invalid or conflicting Content-Length")
            }
        }
        if !codings.isEmpty && codings != ["chunked"] {
            return .reject(.badRequest, "unsupported Transfer-Encoding \(codings.joined(separator: ", ")) (only chunked)")
        }
        let upgrade = upgradeValues.joined(separator: ",").lowercased()
        if upgrade.contains("h2c") || http2Settings {
            return .reject(.badRequest, "HTTP/2 upgrade (h2c) is not allowed through the mesh; use prior knowledge")
        }
        if !upgrade.isEmpty {
            return .reject(.notImplemented, "protocol upgrade (\(upgrade)) is not supported on HTTP ports yet")
        }
        if head.method == .CONNECT {
            return .reject(.methodNotAllowed, "CONNECT is not proxied")
        }
        var out = head
        out.version = .http1_1
        // Room for what is added below and by the trace context: the header list is copied
        // once (it is shared with the caller's head) instead of grown per added header.
        out.headers.reserveCapacity(h.count + 5)
        // TE is hop-by-hop, but "trailers" in it says the client accepts trailers; the mesh
        // forwards trailers, so it says the same upstream (gRPC servers require it).
        let acceptsTrailers = teValues.contains { value in
            value.lowercased().split(separator: ",").contains { $0.trimmingCharacters(in: .whitespaces).hasPrefix("trailers") }
        }
        if stripHopByHop(&out.headers) {
            // The client named end-to-end headers in Connection: they are gone, look again.
            forwardedFor = out.headers["x-forwarded-for"]
            forwardedProto = out.headers.contains(name: "x-forwarded-proto")
            firstRequestID = out.headers.first(name: "x-request-id")
        }
        if acceptsTrailers { out.headers.add(name: "te", value: "trailers") }
        if let client {
            if forwardedFor.isEmpty {
                out.headers.add(name: "x-forwarded-for", value: "\(client)")
            } else {
                let prior = forwardedFor.joined(separator: ", ")
                out.headers.replaceOrAdd(name: "x-forwarded-for", value: prior.isEmpty ? "\(client)" : "\(prior), \(client)")
            }
        }
        if !forwardedProto { out.headers.add(name: "x-forwarded-proto", value: "http") }
        if firstRequestID?.isEmpty ?? true {
            out.headers.replaceOrAdd(name: "x-request-id", value: requestID())
        }
        return .forward(out)
    }

    /// A response head as it goes back to the client.
    public static func response(_ head: HTTPResponseHead, keepClientAlive: Bool) -> HTTPResponseHead {
        var out = head
        out.version = .http1_1
        stripHopByHop(&out.headers)
        if !keepClientAlive { out.headers.replaceOrAdd(name: "connection", value: "close") }
        return out
    }

    /// On every request and response, in one pass that allocates nothing when (as usual)
    /// the message carries no hop-by-hop header but `connection`.
    /// Returns whether headers named in `Connection` were removed too.
    @discardableResult
    static func stripHopByHop(_ headers: inout HTTPHeaders) -> Bool {
        var present = false
        var named: [String] = []
        for (name, value) in headers where hopByHopNames.contains(where: { asciiCaseInsensitiveEquals(name, $0) }) {
            present = true
            guard asciiCaseInsensitiveEquals(name, "connection") else { continue }
            for token in value.utf8.split(separator: UInt8(ascii: ",")) {
                let trimmed = token.drop { $0 == 0x20 || $0 == 0x09 }.reversed().drop { $0 == 0x20 || $0 == 0x09 }.reversed()
                let text = String(decoding: trimmed, as: UTF8.self).lowercased()
                if text != "transfer-encoding", text != "content-length", !text.isEmpty { named.append(text) }
            }
        }
        guard present else { return false }
        // One rebuild instead of a scan per name to remove.
        var kept = HTTPHeaders()
        kept.reserveCapacity(headers.count)
        for (name, value) in headers {
            if hopByHopNames.contains(where: { asciiCaseInsensitiveEquals(name, $0) }) { continue }
            if !named.isEmpty, named.contains(where: { asciiCaseInsensitiveEquals(name, $0) }) { continue }
            kept.add(name: name, value: value)
        }
        headers = kept
        return !named.isEmpty
    }

    /// ASCII case-insensitive comparison without allocating (header names are ASCII).
    @inline(__always)
    static func asciiCaseInsensitiveEquals(_ a: String, _ b: String) -> Bool {
        let x = a.utf8, y = b.utf8
        guard x.count == y.count else { return false }
        // Over the bytes in place (native strings, small ones included, are contiguous UTF-8):
        // a zip of the two UTF-8 views costs several times more, and this runs per header.
        if let same = x.withContiguousStorageIfAvailable({ p in y.withContiguousStorageIfAvailable { q in foldedEqual(p, q) } }), let same {
            return same
        }
        return zip(x, y).allSatisfy { p, q in p == q || (p | 0x20 == q | 0x20 && (p | 0x20) >= UInt8(ascii: "a") && (p | 0x20) <= UInt8(ascii: "z")) }
    }

    /// Same length assumed.
    private static func foldedEqual(_ p: UnsafeBufferPointer<UInt8>, _ q: UnsafeBufferPointer<UInt8>) -> Bool {
        for i in 0..<p.count {
            let c = p[i], d = q[i]
            if c == d { continue }
            let lower = c | 0x20
            guard lower == d | 0x20, lower >= UInt8(ascii: "a"), lower <= UInt8(ascii: "z") else { return false }
        }
        return true
    }

    /// Headers that describe one hop, never the message; removed in both directions.
    static let hopByHopNames = ["connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade"]
}
