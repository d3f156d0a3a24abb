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
        let bytes = h.reduce(0) { $0 + $1.name.utf8.count + $1.value.utf8.count + 4 }
        guard bytes <= maxHeaderBytes else {
            return .reject(.requestHeaderFieldsTooLarge, "headers larger than \(maxHeaderBytes) bytes")
        }
        let lengths = h["content-length"].flatMap { $0.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) } }
        let codings = h["transfer-encoding"].flatMap { $0.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces).lowercased() } }
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
        let upgrade = h["upgrade"].joined(separator: ",").lowercased()
        if upgrade.contains("h2c") || h.contains(name: "http2-settings") {
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
        // TE is hop-by-hop, but "trailers" in it says the client accepts trailers; the mesh
        // forwards trailers, so it says the same upstream (gRPC servers require it).
        let acceptsTrailers = h["te"].contains { value in
            value.lowercased().split(separator: ",").contains { $0.trimmingCharacters(in: .whitespaces).hasPrefix("trailers") }
        }
        stripHopByHop(&out.headers)
        if acceptsTrailers { out.headers.add(name: "te", value: "trailers") }
        if let client {
            let prior = out.headers["x-forwarded-for"].joined(separator: ", ")
            out.headers.replaceOrAdd(name: "x-forwarded-for", value: prior.isEmpty ? "\(client)" : "\(prior), \(client)")
        }
        if !out.headers.contains(name: "x-forwarded-proto") { out.headers.add(name: "x-forwarded-proto", value: "http") }
        if out.headers["x-request-id"].first?.isEmpty ?? true {
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
    static func stripHopByHop(_ headers: inout HTTPHeaders) {
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
        guard present else { return }
        for name in hopByHopNames + named { headers.remove(name: name) }
    }

    /// ASCII case-insensitive comparison without allocating (header names are ASCII).
    @inline(__always)
    static func asciiCaseInsensitiveEquals(_ a: String, _ b: String) -> Bool {
        let x = a.utf8, y = b.utf8
        guard x.count == y.count else { return false }
        return zip(x, y).allSatisfy { p, q in p == q || (p | 0x20 == q | 0x20 && (p | 0x20) >= UInt8(ascii: "a") && (p | 0x20) <= UInt8(ascii: "z")) }
    }

    /// Headers that describe one hop, never the message; removed in both directions.
    static let hopByHopNames = ["connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade"]
}
