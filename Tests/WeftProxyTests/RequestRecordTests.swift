import NIOHTTP1
import WeftCore
import WeftTelemetry
import XCTest

@testable import WeftProxy

/// What the telemetry reads of a request on its way upstream, and the per-connection caches
/// it keeps between requests.
final class RequestRecordTests: XCTestCase {
    /// One pass finds the first of each header the access log prints (names in any case),
    /// every traceparent, and whether a tracestate came; headers of the same length as the
    /// ones looked for are told apart.
    func testForwardedHeadersAreFoundInOnePass() {
        let seen = ForwardedHeaders(HTTPHeaders([
            ("Host", "pay.shop:8080"), ("user-agent", "curl/8"), ("TraceState", "a=1"), ("accept-foo", "x"),
            ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"), ("X-Request-ID", "id-1"),
            ("host", "second"), ("User-Agent", "second"), ("x-request-id", "id-2"),
            ("X-Forwarded-For", "10.0.0.1"), ("x-forwarded-for", "10.0.0.2"),
            ("TRACEPARENT", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b8-01"),
        ]))
        XCTAssertEqual(seen.host, "pay.shop:8080")
        XCTAssertEqual(seen.userAgent, "curl/8")
        XCTAssertEqual(seen.requestID, "id-1")
        XCTAssertEqual(seen.forwardedFor, "10.0.0.1")
        XCTAssertEqual(seen.traceparents.count, 2, "every traceparent: more than one makes the context invalid")
        XCTAssertTrue(seen.hasTracestate)

        let none = ForwardedHeaders(HTTPHeaders([("accept", "*/*"), ("content-type", "text/plain")]))
        XCTAssertNil(none.host)
        XCTAssertNil(none.userAgent)
        XCTAssertNil(none.requestID)
        XCTAssertNil(none.forwardedFor)
        XCTAssertEqual(none.traceparents, [])
        XCTAssertFalse(none.hasTracestate)

        // The access log's description of the request comes from them, "-" without a host.
        let r = RequestRecord()
        r.start(HTTPRequestHead(version: .http1_1, method: .GET, uri: "/a?b=1", headers: ["host": "x"]))
        r.describe(seen, http2: false, client: "10.0.0.9:4000")
        XCTAssertEqual([r.authority, r.userAgent, r.loggedRequestID, r.forwardedFor, r.client], ["pay.shop:8080", "curl/8", "id-1", "10.0.0.1", "10.0.0.9:4000"])
        XCTAssertTrue(r.described)
        r.describe(none, http2: true, client: nil)
        XCTAssertEqual(r.authority, "-")
        XCTAssertNil(r.userAgent)
        XCTAssertTrue(r.http2)
        // A new request resets what the last one described.
        r.start(HTTPRequestHead(version: .http1_1, method: .GET, uri: "/", headers: [:]))
        XCTAssertFalse(r.described)
        XCTAssertNil(r.loggedRequestID)
    }

    /// Once a request is recorded, the record lets go of every string the request gave it
    /// (they are freed then, not when the connection's next request comes), and the next
    /// request starts from it as from a new one.
    func testFinishedRecordHoldsNothingOfItsRequest() throws {
        let target = OriginalDestination(ip: IPAddress("10.0.0.7")!, port: 9090)
        let r = RequestRecord()
        r.start(HTTPRequestHead(version: .http1_1, method: .POST, uri: "/pay/a-long-path?with=query", headers: ["content-type": "application/grpc"]))
        r.describe(ForwardedHeaders(HTTPHeaders([("host", "pay"), ("user-agent", "curl/8"), ("x-request-id", "0f3c5a1e-7d7e-4a44-9d0e-6c1f7c2b9a10"),
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
        XCTAssertEqual(r.authority, "-")
        XCTAssertNil(r.userAgent)
        XCTAssertNil(r.loggedRequestID)
        XCTAssertNil(r.forwardedFor)

        r.start(HTTPRequestHead(version: .http1_1, method: .GET, uri: "/next", headers: [:]))
        XCTAssertEqual(r.uri, "/next")
        XCTAssertFalse(r.isGRPC)
        XCTAssertFalse(r.described)
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

    /// Header bytes as on the wire, and the first value of the header looked for (none when
    /// nothing is: grpc-status is only looked for on gRPC exchanges).
    func testWireSizeFindsOnlyWhatItIsAskedFor() {
        let headers = HTTPHeaders([("Content-Type", "application/grpc"), ("grpc-status", "14"), ("grpc-status", "0")])
        let found = RequestRecord.wireSize(headers, finding: "grpc-status")
        XCTAssertEqual(found.bytes, (12 + 16 + 4) + (11 + 2 + 4) + (11 + 1 + 4))
        XCTAssertEqual(found.value, "14")
        XCTAssertEqual(RequestRecord.wireSize(headers, finding: "content-type").value, "application/grpc")
        let none = RequestRecord.wireSize(headers, finding: nil)
        XCTAssertEqual(none.bytes, found.bytes)
        XCTAssertNil(none.value)

        let r = RequestRecord()
        r.start(HTTPRequestHead(version: .http1_1, method: .GET, uri: "/", headers: [:]))
        r.response(HTTPResponseHead(version: .http1_1, status: .ok, headers: ["grpc-status": "7"]))
        XCTAssertEqual(r.grpcStatus, "", "not a gRPC request")
        r.start(HTTPRequestHead(version: .http1_1, method: .POST, uri: "/pkg.Svc/Call", headers: ["content-type": "application/grpc+proto"]))
        XCTAssertTrue(r.isGRPC)
        r.response(HTTPResponseHead(version: .http1_1, status: .ok, headers: ["grpc-status": "7"]))
        XCTAssertEqual(r.grpcStatus, "7", "a trailers-only gRPC answer")
    }
}
