import NIOHTTP1
import WeftCore
import WeftTelemetry
import XCTest

@testable import WeftProxy

/// What the telemetry reads of a request on its way upstream, and the per-connection caches
/// it keeps between requests.
final class RequestRecordTests: XCTestCase {
    /// The header policy's one pass finds what the telemetry reads: the header bytes, the
    /// first content-type, host and user-agent (names in any case), every traceparent,
    /// whether a tracestate came, and x-request-id and x-forwarded-for as forwarded (the
    /// mesh's own when it adds them); headers of the same length as those looked for are
    /// told apart, a refused request still has its facts, and headers the client named in
    /// Connection (removed) are not reported.
    func testRequestFactsComeFromThePolicysPass() {
        let headers = HTTPHeaders([
            ("Host", "pay.shop:8080"), ("user-agent", "curl/8"), ("TraceState", "a=1"), ("accept-foo", "x"),
            ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"), ("X-Request-ID", "id-1"),
            ("host", "second"), ("User-Agent", "second"), ("x-request-id", "id-2"), ("Content-Type", "application/grpc"),
            ("X-Forwarded-For", "10.0.0.1"), ("x-forwarded-for", "10.0.0.2"),
            ("TRACEPARENT", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b8-01"),
        ])
        let seen = Self.seen(headers)
        XCTAssertEqual(seen.bytes, headers.reduce(0) { $0 + $1.name.utf8.count + $1.value.utf8.count + 4 })
        XCTAssertEqual(seen.host, "pay.shop:8080")
        XCTAssertEqual(seen.userAgent, "curl/8")
        XCTAssertEqual(seen.contentType, "application/grpc")
        XCTAssertEqual(seen.requestID, "id-1")
        XCTAssertEqual(seen.forwardedFor, "10.0.0.1", "no client address: forwarded as they came")
        XCTAssertEqual(seen.traceparents.count, 2, "every traceparent: more than one makes the context invalid")
        XCTAssertTrue(seen.hasTracestate)
        XCTAssertEqual(Self.seen(headers, client: IPAddress("10.0.0.9")).forwardedFor, "10.0.0.1, 10.0.0.2, 10.0.0.9",
                       "the x-forwarded-for the mesh sends on")

        let none = Self.seen(HTTPHeaders([("accept", "*/*"), ("content-type", "text/plain")]), client: IPAddress("10.0.0.9"))
        XCTAssertNil(none.host)
        XCTAssertNil(none.userAgent)
        XCTAssertEqual(none.contentType, "text/plain")
        XCTAssertEqual(none.requestID, "generated-id", "the x-request-id the mesh added")
        XCTAssertEqual(none.forwardedFor, "10.0.0.9")
        XCTAssertEqual(none.traceparents, [])
        XCTAssertFalse(none.hasTracestate)

        // Refused (Content-Length with Transfer-Encoding): what came is still reported.
        let refused = Self.seen(HTTPHeaders([("host", "pay"), ("content-length", "3"), ("transfer-encoding", "chunked"), ("x-request-id", "r-1")]))
        XCTAssertEqual([refused.host, refused.requestID], ["pay", "r-1"])
        XCTAssertGreaterThan(refused.bytes, 0)
        // More header fields than allowed: refused before the pass, counted all the same.
        let many = HTTPHeaders((0...HTTPHeaderPolicy.maxHeaderCount).map { ("x-h\($0)", "v") } + [("host", "pay")])
        let tooMany = Self.seen(many)
        XCTAssertEqual(tooMany.host, "pay")
        XCTAssertEqual(tooMany.bytes, many.reduce(0) { $0 + $1.name.utf8.count + $1.value.utf8.count + 4 })
        // A header the client named in Connection is not forwarded, so not reported.
        let named = Self.seen(HTTPHeaders([("host", "pay"), ("user-agent", "curl/8"), ("connection", "user-agent"), ("x-request-id", "n-1")]))
        XCTAssertNil(named.userAgent)
        XCTAssertEqual([named.host, named.requestID], ["pay", "n-1"])

        // The access log's description of the request comes from them, "-" without a host.
        let r = RequestRecord()
        r.start(HTTPRequestHead(version: .http1_1, method: .GET, uri: "/a?b=1", headers: ["host": "x"]))
        r.describe(seen, http2: false, client: "10.0.0.9:4000")
        XCTAssertEqual([r.line.authority, r.line.userAgent, r.line.requestID, r.line.forwardedFor, r.line.downstreamAddress],
                       ["pay.shop:8080", "curl/8", "id-1", "10.0.0.1", "10.0.0.9:4000"])
        XCTAssertEqual([r.line.method, r.line.path, r.line.httpProtocol], ["GET", "/a?b=1", "HTTP/1.1"])
        XCTAssertTrue(r.described)
        r.describe(none, http2: true, client: nil)
        XCTAssertEqual(r.line.authority, "-")
        XCTAssertNil(r.line.userAgent)
        XCTAssertEqual(r.line.httpProtocol, "HTTP/2")
        // A new request resets what the last one described.
        r.start(HTTPRequestHead(version: .http1_1, method: .GET, uri: "/", headers: [:]))
        XCTAssertFalse(r.described)
    }

    /// Once a request is recorded, the record lets go of every string the request gave it
    /// (they are freed then, not when the connection's next request comes), and the next
    /// request starts from it as from a new one.
    func testFinishedRecordHoldsNothingOfItsRequest() throws {
        let target = OriginalDestination(ip: IPAddress("10.0.0.7")!, port: 9090)
        let r = RequestRecord()
        r.start(HTTPRequestHead(version: .http1_1, method: .POST, uri: "/pay/a-long-path?with=query", headers: ["content-type": "application/grpc"]))
        r.describe(Self.seen(HTTPHeaders([("host", "pay"), ("user-agent", "curl/8"), ("x-request-id", "0f3c5a1e-7d7e-4a44-9d0e-6c1f7c2b9a10"),
                                                 ("x-forwarded-for", "10.0.0.1")])), http2: false, client: "10.0.0.9:4000")
        r.requestID = "0f3c5a1e-7d7e-4a44-9d0e-6c1f7c2b9a10"
        r.routeName = "pay-route"
        r.grpcStatus = "14"
        r.trace = .init(context: TraceContext(traceHigh: 1, traceLow: 2, span: 3, sampled: true), parent: 4)
        r.route(to: .init(workload: "pay-v1", service: ServiceKey(name: try ServiceName("pay"), namespace: .default),
                          host: "pay.default.svc.cluster.local", target: target))
        XCTAssertEqual(r.endpoint, target)

        r.finish()
        XCTAssertEqual(r.uri, "")
        XCTAssertNil(r.requestID)
        XCTAssertNil(r.routeName)
        XCTAssertEqual(r.grpcStatus, "")
        XCTAssertNil(r.trace)
        XCTAssertNil(r.destination)
        XCTAssertNil(r.endpoint)
        XCTAssertEqual(r.endpointWorkload, "")
        XCTAssertEqual(r.line.authority, "-")
        XCTAssertNil(r.line.userAgent)
        XCTAssertNil(r.line.requestID)
        XCTAssertNil(r.line.forwardedFor)
        XCTAssertNil(r.line.routeName)
        XCTAssertEqual(r.line.path, "")
        XCTAssertNil(r.line.upstream)
        XCTAssertTrue(r.line.peers === AccessLogPeers.none, "the line lets go of the peers it was logged with")

        r.start(HTTPRequestHead(version: .http1_1, method: .GET, uri: "/next", headers: [:]))
        XCTAssertEqual(r.uri, "/next")
        XCTAssertFalse(r.isGRPC)
        XCTAssertFalse(r.described)
    }

    /// The access log formats the record's own line in place: the request's fields as they
    /// were gathered, completed with how it ended; the next request on the connection logs
    /// its own fields, nothing of the last one's.
    func testAccessLineIsFormattedFromTheRecord() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("weft-record-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("access.log").path
        let log = try AccessLog(destination: path, format: .json, writerThread: false)
        let target = OriginalDestination(ip: IPAddress("10.0.0.7")!, port: 9090)
        let labels = MeshLabels(reporter: .source, source: .unknown, destination: .unknown,
                                service: ServiceLabels(host: "pay.default.svc.cluster.local", name: "pay", namespace: "default"),
                                requestProtocol: "http", securityPolicy: "none")
        let r = RequestRecord()
        r.start(HTTPRequestHead(version: .http1_1, method: .POST, uri: "/pay?x=1", headers: ["host": "pay", "content-length": "3"]))
        r.describe(Self.seen(HTTPHeaders([("host", "pay"), ("user-agent", "curl/8"), ("x-request-id", "rid-1"),
                                                 ("x-forwarded-for", "10.0.0.1")])), http2: false, client: "10.0.0.9:4000")
        r.routeName = "pay-route"
        r.requestBytes += 3
        r.route(to: .init(workload: "pay-v1", service: ServiceKey(name: try ServiceName("pay"), namespace: .default),
                          host: "pay.default.svc.cluster.local", target: target))
        r.response(HTTPResponseHead(version: .http1_1, status: .created, headers: ["content-length": "2"]))
        r.responseBytes += 2
        let received = r.requestBytes, sent = r.responseBytes
        r.completeLine(code: 201, flags: "-", durationMilliseconds: 12.4, peers: log.peers(labels, upstream: target))
        r.writeLine(to: log)
        r.finish()
        // The next request on the connection: no user agent or route of its own.
        r.start(HTTPRequestHead(version: .http1_1, method: .GET, uri: "/next", headers: [:]))
        r.describe(Self.seen(HTTPHeaders([("host", "pay")])), http2: false, client: "10.0.0.9:4000")
        r.completeLine(code: 503, flags: "UF", durationMilliseconds: 0.2, peers: log.peers(labels))
        r.writeLine(to: log)
        r.finish()
        log.close()

        let lines = try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(lines.count, 2)
        let first = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(lines[0].utf8)) as? [String: Any])
        XCTAssertEqual(first["method"] as? String, "POST")
        XCTAssertEqual(first["path"] as? String, "/pay?x=1")
        XCTAssertEqual(first["protocol"] as? String, "HTTP/1.1")
        XCTAssertEqual(first["response_code"] as? Int, 201)
        XCTAssertEqual(first["response_flags"] as? String, "-")
        XCTAssertEqual(first["duration"] as? Int, 12)
        XCTAssertEqual(first["bytes_received"] as? Int, received)
        XCTAssertEqual(first["bytes_sent"] as? Int, sent)
        XCTAssertEqual(first["authority"] as? String, "pay")
        XCTAssertEqual(first["user_agent"] as? String, "curl/8")
        XCTAssertEqual(first["request_id"] as? String, "rid-1")
        XCTAssertEqual(first["x_forwarded_for"] as? String, "10.0.0.1")
        XCTAssertEqual(first["route_name"] as? String, "pay-route")
        XCTAssertEqual(first["upstream_host"] as? String, "10.0.0.7:9090")
        XCTAssertEqual(first["downstream_remote_address"] as? String, "10.0.0.9:4000")
        XCTAssertEqual(first["upstream_cluster"] as? String, "pay.default.svc.cluster.local")
        let second = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(lines[1].utf8)) as? [String: Any])
        XCTAssertEqual(second["method"] as? String, "GET")
        XCTAssertEqual(second["path"] as? String, "/next")
        XCTAssertEqual(second["response_code"] as? Int, 503)
        XCTAssertEqual(second["response_flags"] as? String, "UF")
        XCTAssertEqual(second["request_id"] as? String, "generated-id", "its own")
        for field in ["user_agent", "x_forwarded_for", "route_name", "upstream_host"] {
            XCTAssertNil(second[field], "\(field) is the last request's, not this one's")
        }
    }

    /// A connection's cached labels are reused only for the same endpoint, workload, protocol
    /// and directory generation.
    func testLabelCacheMatchesOnlyItsDestination() throws {
        let target = OriginalDestination(ip: IPAddress("10.0.0.7")!, port: 9090)
        let service = ServiceKey(name: try ServiceName("pay"), namespace: .default)
        let labels = MeshLabels(reporter: .source, source: .unknown, destination: .unknown,
                                service: ServiceLabels(host: "pay.default.svc.cluster.local", name: "pay", namespace: "default"),
                                requestProtocol: "http", securityPolicy: "none")
        let cache = LabelCache(target: target, workload: "pay-v1", proto: "http", generation: 3, labels: labels)
        let r = RequestRecord()
        r.start(HTTPRequestHead(version: .http1_1, method: .GET, uri: "/", headers: [:]))
        XCTAssertFalse(cache.matches(r, proto: "http", generation: 3), "no destination (passthrough)")
        r.route(to: .init(workload: "pay-v1", service: service, host: "pay.default.svc.cluster.local", target: target))
        XCTAssertTrue(cache.matches(r, proto: "http", generation: 3))
        XCTAssertFalse(cache.matches(r, proto: "grpc", generation: 3))
        XCTAssertFalse(cache.matches(r, proto: "http", generation: 4), "the directory changed since")
        r.route(to: .init(workload: "pay-v2", service: service, host: "pay.default.svc.cluster.local", target: target))
        XCTAssertFalse(cache.matches(r, proto: "http", generation: 3))
        r.route(to: .init(workload: "pay-v1", service: service, host: "pay.default.svc.cluster.local",
                              target: OriginalDestination(ip: IPAddress("10.0.0.8")!, port: 9090)))
        XCTAssertFalse(cache.matches(r, proto: "http", generation: 3))
        r.route(to: nil)
        XCTAssertFalse(cache.matches(r, proto: "http", generation: 3), "routed nowhere again")

        // Found to fit as the request is routed: the record keeps the labels, not the names.
        XCTAssertTrue(cache.fits(endpoint: target, workload: "pay-v1", proto: "http", generation: 3))
        XCTAssertFalse(cache.fits(endpoint: target, workload: "pay-v2", proto: "http", generation: 3))
        XCTAssertFalse(cache.fits(endpoint: target, workload: "pay-v1", proto: "grpc", generation: 3))
        XCTAssertFalse(cache.fits(endpoint: target, workload: "pay-v1", proto: "http", generation: 2))
        XCTAssertFalse(cache.fits(endpoint: OriginalDestination(ip: IPAddress("10.0.0.8")!, port: 9090), workload: "pay-v1", proto: "http", generation: 3))
        r.route(to: target, labels: cache)
        XCTAssertTrue(r.knownLabels === cache)
        XCTAssertNil(r.destination)
        XCTAssertEqual(r.endpoint, target)
        XCTAssertTrue(cache.matches(r, proto: "http", generation: 3))
        r.route(to: .init(workload: "pay-v2", service: service, host: "pay.default.svc.cluster.local", target: target))
        XCTAssertNil(r.knownLabels, "routed elsewhere: the labels are worked out from the destination")
        r.route(to: target, labels: cache)
        r.finish()
        XCTAssertNil(r.knownLabels)
        XCTAssertNil(r.endpoint)
    }

    /// The response's header bytes as on the wire and its grpc-status, found in the header
    /// policy's pass over them (grpc-status only looked for on gRPC exchanges; the first
    /// one), also when the response carries hop-by-hop headers it strips.
    func testResponseFactsComeFromThePolicysPass() {
        let head = HTTPResponseHead(version: .http1_1, status: .ok,
                                    headers: HTTPHeaders([("Content-Type", "application/grpc"), ("grpc-status", "14"), ("Connection", "keep-alive"), ("grpc-status", "0")]))
        let expected = (12 + 16 + 4) + (11 + 2 + 4) + (10 + 10 + 4) + (11 + 1 + 4)
        var facts: HTTPHeaderPolicy.ResponseFacts? = .init()
        let out = HTTPHeaderPolicy.response(head, keepClientAlive: true, facts: &facts, gRPC: true)
        XCTAssertEqual(facts, .init(bytes: expected, grpcStatus: "14"))
        XCTAssertFalse(out.headers.contains(name: "connection"), "still stripped")
        _ = HTTPHeaderPolicy.response(head, keepClientAlive: true, facts: &facts, gRPC: false)
        XCTAssertEqual(facts, .init(bytes: expected, grpcStatus: nil), "not looked for on HTTP")
        var none: HTTPHeaderPolicy.ResponseFacts?
        XCTAssertEqual(HTTPHeaderPolicy.response(head, keepClientAlive: false, facts: &none, gRPC: true),
                       HTTPHeaderPolicy.response(head, keepClientAlive: false), "same head either way")
        XCTAssertNil(none, "telemetry off: nothing counted")

        let r = RequestRecord()
        r.start(HTTPRequestHead(version: .http1_1, method: .GET, uri: "/", headers: [:]))
        r.response(HTTPResponseHead(version: .http1_1, status: .ok, headers: ["grpc-status": "7"]))
        XCTAssertEqual(r.grpcStatus, "", "not a gRPC request")
        XCTAssertEqual(r.status, 200)
        XCTAssertEqual(r.responseBytes, 11 + 1 + 4 + 15)
        r.start(HTTPRequestHead(version: .http1_1, method: .POST, uri: "/pkg.Svc/Call", headers: ["content-type": "application/grpc+proto"]))
        XCTAssertTrue(r.isGRPC)
        r.response(HTTPResponseHead(version: .http1_1, status: .ok, headers: ["grpc-status": "7"]))
        XCTAssertEqual(r.grpcStatus, "7", "a trailers-only gRPC answer")
    }

    /// What begin() gets from the header policy's pass for a request with `headers`.
    static func seen(_ headers: HTTPHeaders, client: IPAddress? = nil) -> HTTPHeaderPolicy.RequestFacts {
        var facts: HTTPHeaderPolicy.RequestFacts? = .init()
        _ = HTTPHeaderPolicy.request(HTTPRequestHead(version: .http1_1, method: .GET, uri: "/", headers: headers), client: client,
                                     facts: &facts) { "generated-id" }
        return facts!
    }
}

extension RequestRecord {
    /// As begin() starts it: with the bytes and content type the policy's pass found.
    func start(_ head: HTTPRequestHead) {
        let facts = RequestRecordTests.seen(head.headers)
        start(head, headerBytes: facts.bytes, contentType: facts.contentType)
    }

    /// As the handler records a response head: with what the policy's pass found in it.
    func response(_ head: HTTPResponseHead) {
        var facts: HTTPHeaderPolicy.ResponseFacts? = .init()
        _ = HTTPHeaderPolicy.response(head, keepClientAlive: true, facts: &facts, gRPC: isGRPC)
        response(head.status, facts: facts!)
    }
}
