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


    /// What the telemetry reads of a request's headers, gathered in the policy's own pass
    /// over them (the record's byte count and gRPC test, the access log's fields, the trace
    /// context), so that a request's headers are walked once, not three times.
    public struct RequestFacts: Equatable, Sendable {
        /// The header bytes as received (HTTP/1.1 framing: name, ": ", value, CRLF).
        public var bytes = 0
        public var contentType: String?
        public var host: String?
        public var userAgent: String?
        /// The first x-request-id and x-forwarded-for as forwarded: after the policy added
        /// or extended them (on a refused request: as they came).
        public var requestID: String?
        public var forwardedFor: String?
        /// Every traceparent (more than one makes the context invalid), and whether any
        /// tracestate came.
        public var traceparents: [String] = []
        public var hasTracestate = false

        public init() {}

        /// The same, found in `headers` as they are (a request whose Connection header named
        /// others: the policy removed those, so what is forwarded is looked at again).
        init(forwarded headers: HTTPHeaders, bytes: Int, contentType: String?) {
            self.bytes = bytes
            self.contentType = contentType
            for (name, value) in headers {
                switch name.utf8.count {
                case 4 where host == nil && asciiCaseInsensitiveEquals(name, "host"): host = value
                case 10 where asciiCaseInsensitiveEquals(name, "tracestate"): hasTracestate = true
                case 10 where userAgent == nil && asciiCaseInsensitiveEquals(name, "user-agent"): userAgent = value
                case 11 where asciiCaseInsensitiveEquals(name, "traceparent"): traceparents.append(value)
                case 12 where requestID == nil && asciiCaseInsensitiveEquals(name, "x-request-id"): requestID = value
                case 15 where forwardedFor == nil && asciiCaseInsensitiveEquals(name, "x-forwarded-for"): forwardedFor = value
                default: break
                }
            }
        }
    }

    public static func request(_ head: HTTPRequestHead, client: IPAddress?, requestID: () -> String) -> Verdict {
        var facts: RequestFacts?
        return request(head, client: client, facts: &facts, requestID: requestID)
    }

    /// The same, filling in `facts` (when not nil: telemetry is on) in the same pass, on a
    /// refused request too (its bytes and what the access log prints of it).
    public static func request(_ head: HTTPRequestHead, client: IPAddress?, facts: inout RequestFacts?,
                               requestID: () -> String) -> Verdict {
        let h = head.headers
        let gather = facts != nil
        guard h.count <= maxHeaderCount else {
            if gather { facts = RequestFacts(forwarded: h, bytes: h.reduce(0) { $0 + $1.name.utf8.count + $1.value.utf8.count + 4 }, contentType: nil) }
            return .reject(.requestHeaderFieldsTooLarge, "more than \(maxHeaderCount) header fields")
        }
        // One pass over the headers gathers what the rules below look at (most requests
        // carry none of them: nothing is allocated then), and what the telemetry reads.
        var bytes = 0
        var lengthValues: [String] = [], codingValues: [String] = [], upgradeValues: [String] = [], teValues: [String] = []
        var forwardedFor: [String] = []
        var http2Settings = false, forwardedProto = false, firstRequestID: String?
        var host: String?, userAgent: String?, contentType: String?, traceparents: [String] = [], hasTracestate = false
        for (name, value) in h {
            bytes += name.utf8.count + value.utf8.count + 4
            switch name.utf8.count {
            case 2 where asciiCaseInsensitiveEquals(name, "te"): teValues.append(value)
            case 4 where gather && host == nil && asciiCaseInsensitiveEquals(name, "host"): host = value
            case 7 where asciiCaseInsensitiveEquals(name, "upgrade"): upgradeValues.append(value)
            case 10 where gather && asciiCaseInsensitiveEquals(name, "tracestate"): hasTracestate = true
            case 10 where gather && userAgent == nil && asciiCaseInsensitiveEquals(name, "user-agent"): userAgent = value
            case 11 where gather && asciiCaseInsensitiveEquals(name, "traceparent"): traceparents.append(value)
            case 12 where asciiCaseInsensitiveEquals(name, "x-request-id"): if firstRequestID == nil { firstRequestID = value }
            case 12 where gather && contentType == nil && asciiCaseInsensitiveEquals(name, "content-type"): contentType = value
            case 14 where asciiCaseInsensitiveEquals(name, "content-length"): lengthValues.append(value)
            case 14 where asciiCaseInsensitiveEquals(name, "http2-settings"): http2Settings = true
            case 15 where asciiCaseInsensitiveEquals(name, "x-forwarded-for"): forwardedFor.append(value)
            case 17 where asciiCaseInsensitiveEquals(name, "transfer-encoding"): codingValues.append(value)
            case 17 where asciiCaseInsensitiveEquals(name, "x-forwarded-proto"): forwardedProto = true
            default: break
            }
        }
        if gather {
            var f = RequestFacts()
            f.bytes = bytes
            f.contentType = contentType
            f.host = host
            f.userAgent = userAgent
            f.traceparents = traceparents
            f.hasTracestate = hasTracestate
            f.requestID = firstRequestID
            f.forwardedFor = forwardedFor.first
            facts = f
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
            if gather { facts = RequestFacts(forwarded: out.headers, bytes: bytes, contentType: contentType) }
        }
        if acceptsTrailers { out.headers.add(name: "te", value: "trailers") }
        var firstForwardedFor = forwardedFor.first
        if let client {
            if forwardedFor.isEmpty {
                let value = "\(client)"
                out.headers.add(name: "x-forwarded-for", value: value)
                firstForwardedFor = value
            } else {
                let prior = forwardedFor.joined(separator: ", ")
                let value = prior.isEmpty ? "\(client)" : "\(prior), \(client)"
                out.headers.replaceOrAdd(name: "x-forwarded-for", value: value)
                firstForwardedFor = value
            }
        }
        if !forwardedProto { out.headers.add(name: "x-forwarded-proto", value: "http") }
        if firstRequestID?.isEmpty ?? true {
            let id = requestID()
            out.headers.replaceOrAdd(name: "x-request-id", value: id)
            firstRequestID = id
        }
        if gather {
            facts?.requestID = firstRequestID
            facts?.forwardedFor = firstForwardedFor
        }
        return .forward(out)
    }

    /// What the telemetry reads of a response's headers, found in the policy's pass over
    /// them: their bytes as received (HTTP/1.1 framing) and, on gRPC exchanges, the first
    /// grpc-status (a trailers-only answer carries it in the head).
    public struct ResponseFacts: Equatable, Sendable {
        public var bytes = 0
        public var grpcStatus: String?

        public init(bytes: Int = 0, grpcStatus: String? = nil) {
            self.bytes = bytes
            self.grpcStatus = grpcStatus
        }
    }

    /// A response head as it goes back to the client.
    public static func response(_ head: HTTPResponseHead, keepClientAlive: Bool) -> HTTPResponseHead {
        var facts: ResponseFacts?
        return response(head, keepClientAlive: keepClientAlive, facts: &facts, gRPC: false)
    }

    /// The same, filling in `facts` (when not nil: telemetry is on) in the same pass;
    /// grpc-status is only looked for when `gRPC`.
    public static func response(_ head: HTTPResponseHead, keepClientAlive: Bool, facts: inout ResponseFacts?, gRPC: Bool) -> HTTPResponseHead {
        var out = head
        out.version = .http1_1
        stripHopByHop(&out.headers, facts: &facts, gRPC: gRPC)
        if !keepClientAlive { out.headers.replaceOrAdd(name: "connection", value: "close") }
        return out
    }

    @discardableResult
    static func stripHopByHop(_ headers: inout HTTPHeaders) -> Bool {
        var facts: ResponseFacts?
        return stripHopByHop(&headers, facts: &facts, gRPC: false)
    }

    /// On every request and response, in one pass that allocates nothing when (as usual)
    /// the message carries no hop-by-hop header but `connection`; that pass also counts the
    /// bytes and finds grpc-status for `facts`, when not nil.
    /// Returns whether headers named in `Connection` were removed too.
    @discardableResult
    static func stripHopByHop(_ headers: inout HTTPHeaders, facts: inout ResponseFacts?, gRPC: Bool) -> Bool {
        var present = false
        var named: [String] = []
        let counting = facts != nil
        var bytes = 0, grpcStatus: String?
        for (name, value) in headers {
            if counting {
                bytes += name.utf8.count + value.utf8.count + 4
                if gRPC, grpcStatus == nil, name.utf8.count == 11, asciiCaseInsensitiveEquals(name, "grpc-status") { grpcStatus = value }
            }
            guard hopByHopNames.contains(where: { asciiCaseInsensitiveEquals(name, $0) }) else { continue }
            present = true
            guard asciiCaseInsensitiveEquals(name, "connection") else { continue }
            for token in value.utf8.split(separator: UInt8(ascii: ",")) {
                let trimmed = token.drop { $0 == 0x20 || $0 == 0x09 }.reversed().drop { $0 == 0x20 || $0 == 0x09 }.reversed()
                let text = String(decoding: trimmed, as: UTF8.self).lowercased()
                if text != "transfer-encoding", text != "content-length", !text.isEmpty { named.append(text) }
            }
        }
        if counting { facts = ResponseFacts(bytes: bytes, grpcStatus: grpcStatus) }
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
