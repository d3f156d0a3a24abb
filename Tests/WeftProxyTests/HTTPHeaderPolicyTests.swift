import NIOHTTP1
import WeftCore
import XCTest
@testable import WeftProxy

final class HTTPHeaderPolicyTests: XCTestCase {
    func head(_ headers: [(String, String)], method: HTTPMethod = .GET) -> HTTPRequestHead {
        HTTPRequestHead(version: .http1_1, method: method, uri: "/x", headers: HTTPHeaders(headers))
    }

    func verdict(_ headers: [(String, String)], method: HTTPMethod = .GET) -> HTTPHeaderPolicy.Verdict {
        HTTPHeaderPolicy.request(head(headers, method: method), client: IPAddress("10.0.0.9")) { "rid-1" }
    }

    func testSmugglingShapesAreRefused() {
        let cases: [([(String, String)], HTTPResponseStatus, String)] = [
            ([("content-length", "4"), ("transfer-encoding", "chunked")], .badRequest, "both Content-Length and Transfer-Encoding"),
            ([("content-length", "4"), ("content-length", "5")], .badRequest, "conflicting Content-Length"),
            ([("content-length", "4, 5")], .badRequest, "conflicting Content-Length"),
            ([("content-length", "-1")], .badRequest, "invalid"),
            ([("transfer-encoding", "gzip, chunked")], .badRequest, "only chunked"),
            ([("transfer-encoding", "chunked, chunked")], .badRequest, "only chunked"),
            ([("upgrade", "h2c"), ("connection", "upgrade, http2-settings"), ("http2-settings", "AAA")], .badRequest, "h2c"),
            ([("http2-settings", "AAA")], .badRequest, "h2c"),
            ([("upgrade", "websocket"), ("connection", "upgrade")], .notImplemented, "upgrade"),
        ]
        for (headers, status, reason) in cases {
            guard case .reject(let s, let r) = verdict(headers) else { return XCTFail("\(headers) must be refused") }
            XCTAssertEqual(s, status, "\(headers)")
            XCTAssertTrue(r.contains(reason), "\(headers): \(r)")
        }
        guard case .reject(.methodNotAllowed, _) = verdict([], method: .CONNECT) else { return XCTFail("CONNECT") }
        let many = (0..<101).map { ("x-h\($0)", "v") }
        guard case .reject(.requestHeaderFieldsTooLarge, _) = verdict(many) else { return XCTFail("header count limit") }
        guard case .reject(.requestHeaderFieldsTooLarge, _) = verdict([("x-big", String(repeating: "a", count: 70_000))]) else {
            return XCTFail("header size limit")
        }
    }

    func testForwardedRequestIsCleanedAndAnnotated() throws {
        guard case .forward(let out) = verdict([("host", "web"), ("connection", "keep-alive, x-private"), ("x-private", "1"),
                                                 ("keep-alive", "timeout=5"), ("te", "gzip"), ("proxy-connection", "x"),
                                                 ("x-forwarded-for", "192.0.2.1"), ("transfer-encoding", "chunked")]) else {
            return XCTFail("must forward")
        }
        for gone in ["connection", "x-private", "keep-alive", "te", "proxy-connection"] {
            XCTAssertFalse(out.headers.contains(name: gone), gone)
        }
        XCTAssertEqual(out.headers["transfer-encoding"], ["chunked"], "framing is end to end")
        XCTAssertEqual(out.headers["x-forwarded-for"], ["192.0.2.1, 10.0.0.9"])
        XCTAssertEqual(out.headers["x-request-id"], ["rid-1"])
        XCTAssertEqual(out.headers["x-forwarded-proto"], ["http"])
        XCTAssertEqual(out.headers["host"], ["web"])
        guard case .forward(let keep) = verdict([("x-request-id", "given")]) else { return XCTFail() }
        XCTAssertEqual(keep.headers["x-request-id"], ["given"], "an incoming request id is kept")
    }

    /// The one-pass read of the request's headers agrees with the rules when headers repeat,
    /// differ in case, or are named in Connection (then removed before the mesh adds its own).
    func testMeshHeadersAfterRepeatsCaseAndConnectionNames() throws {
        guard case .forward(let twice) = verdict([("X-Forwarded-For", "192.0.2.1"), ("x-forwarded-for", "192.0.2.2"),
                                                  ("X-Request-Id", ""), ("x-request-id", "second"), ("X-Forwarded-Proto", "https")]) else {
            return XCTFail("must forward")
        }
        XCTAssertEqual(twice.headers["x-forwarded-for"], ["192.0.2.1, 192.0.2.2, 10.0.0.9"])
        XCTAssertEqual(twice.headers["x-request-id"], ["rid-1"], "the first x-request-id is empty: a new one replaces both")
        XCTAssertEqual(twice.headers["x-forwarded-proto"], ["https"])
        guard case .forward(let named) = verdict([("connection", "x-forwarded-for, X-Request-ID, x-forwarded-proto"), ("x-forwarded-for", "192.0.2.1"),
                                                  ("x-request-id", "given"), ("x-forwarded-proto", "https")]) else {
            return XCTFail("must forward")
        }
        XCTAssertEqual(named.headers["x-forwarded-for"], ["10.0.0.9"], "the hop's own x-forwarded-for went with Connection")
        XCTAssertEqual(named.headers["x-request-id"], ["rid-1"])
        XCTAssertEqual(named.headers["x-forwarded-proto"], ["http"])
    }

    func testResponseHopByHopIsStripped() {
        let head = HTTPResponseHead(version: .http1_1, status: .ok, headers: HTTPHeaders([("connection", "close"), ("keep-alive", "x"), ("x-app", "1")]))
        let kept = HTTPHeaderPolicy.response(head, keepClientAlive: true)
        XCTAssertFalse(kept.headers.contains(name: "connection"))
        XCTAssertEqual(kept.headers["x-app"], ["1"])
        XCTAssertEqual(HTTPHeaderPolicy.response(head, keepClientAlive: false).headers["connection"], ["close"])
    }
}

final class HTTPHeaderPolicyTrailersTests: XCTestCase {
    func testTETrailersSurvivesOtherTECodingsDoNot() throws {
        var head = HTTPRequestHead(version: .http1_1, method: .POST, uri: "/weft.Test/Say")
        head.headers.add(name: "te", value: "trailers")
        guard case .forward(let out) = HTTPHeaderPolicy.request(head, client: nil, requestID: { "id" }) else { return XCTFail() }
        XCTAssertEqual(out.headers["te"], ["trailers"])
        var gz = HTTPRequestHead(version: .http1_1, method: .GET, uri: "/")
        gz.headers.add(name: "te", value: "gzip")
        guard case .forward(let out2) = HTTPHeaderPolicy.request(gz, client: nil, requestID: { "id" }) else { return XCTFail() }
        XCTAssertFalse(out2.headers.contains(name: "te"))
    }
}

final class ConnectionLogTests: XCTestCase {
    func testKeepsTheNewestUpToCapacity() {
        let log = ConnectionLog(capacity: 3)
        for i in 0..<5 {
            log.add(ConnectionRecord(time: Double(i), client: "c", destination: "d\(i)", proto: "opaque", decidedBy: "sniffed", detectMillis: 0))
        }
        XCTAssertEqual(log.snapshot.map(\.destination), ["d2", "d3", "d4"])
    }
}

final class RequestIDTests: XCTestCase {
    func testVersion4UUIDTextAndNoRepeats() {
        var g = RequestIDGenerator(seed: 42)
        var seen = Set<String>()
        for _ in 0..<1000 {
            let id = g.uuidString()
            XCTAssertEqual(id.count, 36)
            let parts = id.split(separator: "-")
            XCTAssertEqual(parts.map(\.count), [8, 4, 4, 4, 12])
            XCTAssertTrue(parts[2].hasPrefix("4"), id)
            XCTAssertTrue("89ab".contains(parts[3].first!), id)
            XCTAssertEqual(id, id.lowercased())
            seen.insert(id)
        }
        XCTAssertEqual(seen.count, 1000)
        var one = RequestIDGenerator(), two = RequestIDGenerator()
        XCTAssertNotEqual(one.uuidString(), two.uuidString())
    }

    /// Header names compare ASCII case-insensitively, letters only ("[" is not "{"), whatever
    /// their length (small strings are stored inline, longer ones on the heap).
    func testHeaderNamesCompareIgnoringASCIICase() {
        let eq = HTTPHeaderPolicy.asciiCaseInsensitiveEquals
        XCTAssertTrue(eq("X-Request-ID", "x-request-id"))
        XCTAssertTrue(eq("CONTENT-LENGTH", "content-length"))
        XCTAssertTrue(eq("X-A-Very-Long-Header-Name-Stored-On-The-Heap", "x-a-very-long-header-name-stored-on-the-heap"))
        XCTAssertTrue(eq("", ""))
        XCTAssertFalse(eq("x-request-ie", "x-request-id"))
        XCTAssertFalse(eq("x-request-id ", "x-request-id"))
        XCTAssertFalse(eq("[", "{"), "0x5b and 0x7b differ only in the case bit but are not letters")
        XCTAssertFalse(eq("te@", "te`"))
        XCTAssertFalse(eq("h\u{e9}st", "h\u{c9}st"), "only ASCII folds")
        let long = String(repeating: "Ab", count: 40)
        XCTAssertTrue(eq(long, long.lowercased()))
        XCTAssertFalse(eq(long, long.lowercased() + "x"))
    }
}
