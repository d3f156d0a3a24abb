import XCTest
@testable import WeftTelemetry

final class TraceContextTests: XCTestCase {
    func testParseAndFormat() throws {
        let header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        let c = try XCTUnwrap(TraceContext.parse(header))
        XCTAssertTrue(c.sampled)
        XCTAssertEqual(c.traceparent, header)
        XCTAssertEqual(TraceContext.parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")?.sampled, false)
        XCTAssertEqual(TraceContext.parse(" 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\t")?.traceparent, header, "surrounding whitespace")
    }

    /// The W3C test suite's invalid cases: each is treated as absent (a new trace starts).
    func testInvalidHeadersAreRefused() {
        for bad in [
            "", "00", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  // zero trace id
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  // zero parent id
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  // upper case
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  // version ff
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",  // version 00 with more
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",  // short trace id
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",  // short flags
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bz-01",
        ] {
            XCTAssertNil(TraceContext.parse(bad), bad)
        }
        XCTAssertNotNil(TraceContext.parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future"), "a later version with more fields")
    }

    func testTracestateLimits() {
        XCTAssertEqual(TraceContext.validTracestate("congo=t61rcWkgMzE, rojo=00f067aa0ba902b7"), "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")
        XCTAssertNil(TraceContext.validTracestate((0..<33).map { "k\($0)=v" }.joined(separator: ",")), "more than 32 members")
        XCTAssertNil(TraceContext.validTracestate("novalue"))
    }

    func testOTLPEncodingCarriesIdsAndLinks() {
        let s = SpanRecord(traceID: Array(repeating: 0xab, count: 16), spanID: Array(repeating: 0x01, count: 8),
                           parentSpanID: Array(repeating: 0x02, count: 8), name: "web.default.svc.cluster.local:80/*", kind: .client,
                           startNanos: 1, endNanos: 2, attributes: [("http.status_code", .int(200))], isError: false, service: "shop.default")
        let bytes = OTLPEncoding.exportRequest([s], scopeVersion: "x")
        let hex = TraceContext.hex(bytes)
        XCTAssertTrue(hex.contains("0a10" + String(repeating: "ab", count: 16)), "field 1 (trace_id), 16 bytes")
        XCTAssertTrue(hex.contains("1208" + String(repeating: "01", count: 8)), "field 2 (span_id)")
        XCTAssertTrue(hex.contains("2208" + String(repeating: "02", count: 8)), "field 4 (parent_span_id)")
        XCTAssertTrue(hex.contains("3003"), "field 6 (kind) = CLIENT")
        XCTAssertTrue(bytes.count > 100)
    }
}
