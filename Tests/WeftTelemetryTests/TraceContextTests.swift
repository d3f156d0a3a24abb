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

    func testTracestateIsCombinedAndCheckedAgainstTheGrammar() {
        let c = TraceContext.combinedTracestate
        XCTAssertEqual(c(["congo=t61rcWkgMzE, rojo=00f067aa0ba902b7"]), "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")
        XCTAssertEqual(c(["foo=1,bar=2", "rojo=1,congo=2", "baz=3"]), "foo=1,bar=2,rojo=1,congo=2,baz=3", "several headers are one list, in order")
        XCTAssertEqual(c(["", "foo=1", " , ,\t"]), "foo=1", "empty headers and members are dropped")
        XCTAssertNil(c([""]))
        XCTAssertNil(c([]))
        XCTAssertEqual(c(["foo=1,foo=2"]), "foo=1,foo=2", "duplicate keys pass as they came")
        XCTAssertEqual(c(["foo@=1,t@vvv=2,foo@bar@baz=3,a_-*/9=4"]), "foo@=1,t@vvv=2,foo@bar@baz=3,a_-*/9=4")
        let key256 = String(repeating: "z", count: 256), value256 = String(repeating: "v", count: 256)
        XCTAssertEqual(c(["foo=1", key256 + "=" + value256]), "foo=1," + key256 + "=" + value256)
        XCTAssertEqual(c(["v=a !\"#$%&'()*+-./:;<>?@[]^_`{|}~z"]), "v=a !\"#$%&'()*+-./:;<>?@[]^_`{|}~z", "every allowed value character")
        let thirtyTwo = (1...32).map { "bar\($0)=\($0)" }
        XCTAssertEqual(c([thirtyTwo.joined(separator: ",")])?.split(separator: ",").count, 32)
        // One bad member drops the whole list (the spec's strict reading; the test suite checks it).
        for bad in [(thirtyTwo + ["bar33=33"]).joined(separator: ","), "foo=1," + key256 + "z=1", "@foo=1,bar=2", "Foo=1", "foo=bar=baz",
                    "foo=,bar=3", "foo", "foo=a\u{7f}", "foo=a,b"] {
            XCTAssertNil(c(["ok=1", bad]), bad)
        }
    }

    func testTheLevel2RandomFlagIsKept() {
        let c = TraceContext.parse("00-12345678901234567890123456789012-1234567890123456-02")
        XCTAssertEqual(c?.random, true)
        XCTAssertEqual(c?.sampled, false)
        XCTAssertEqual(c?.child([1, 2, 3, 4, 5, 6, 7, 8]).traceparent, "00-12345678901234567890123456789012-0102030405060708-02")
        XCTAssertEqual(TraceContext.parse("00-12345678901234567890123456789012-1234567890123456-03")?.traceparent,
                       "00-12345678901234567890123456789012-1234567890123456-03")
        XCTAssertEqual(TraceContext.parse("00-12345678901234567890123456789012-1234567890123456-01")?.random, false)
    }

    /// New traces are sampled at the configured share (drawn from the ID generator, not a
    /// system call per request): 0 and 1 exactly, 25 % within two points over 40,000 draws.
    func testSamplingFollowsTheRate() {
        XCTAssertFalse((0..<1000).contains { _ in Tracer(collector: "127.0.0.1:4317", sampling: 0).sampleNewTrace() })
        XCTAssertTrue((0..<1000).allSatisfy { _ in Tracer(collector: "127.0.0.1:4317", sampling: 1).sampleNewTrace() })
        let quarter = Tracer(collector: "127.0.0.1:4317", sampling: 0.25)
        let sampled = (0..<40_000).filter { _ in quarter.sampleNewTrace() }.count
        XCTAssertEqual(Double(sampled) / 40_000, 0.25, accuracy: 0.02)
    }

    func testOneTraceparentOnly() {
        let a = "00-12345678901234567890123456789011-1234567890123456-01", b = "00-12345678901234567890123456789012-1234567890123456-01"
        XCTAssertNotNil(TraceContext.parse(values: [a]))
        XCTAssertNil(TraceContext.parse(values: [a, b]), "two traceparent headers: ambiguous, a new trace")
        XCTAssertNil(TraceContext.parse(values: []))
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

    /// The IDs are kept as big-endian words: the bytes, the header and the words agree.
    func testIDsAsWordsAndBytesAgree() throws {
        let c = try XCTUnwrap(TraceContext.parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"))
        XCTAssertEqual(c.traceHigh, 0x4bf9_2f35_77b3_4da6)
        XCTAssertEqual(c.traceLow, 0xa3ce_929d_0e0e_4736)
        XCTAssertEqual(c.span, 0x00f0_67aa_0ba9_02b7)
        XCTAssertEqual(c.traceID, [0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36])
        XCTAssertEqual(c.spanID, [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7])
        XCTAssertEqual(c.traceIDHex, "4bf92f3577b34da6a3ce929d0e0e4736")
        XCTAssertEqual(TraceContext(traceID: c.traceID, spanID: c.spanID, sampled: true), c)
        var d = c
        d.spanID = [1, 2, 3, 4, 5, 6, 7, 8]
        XCTAssertEqual(d.traceparent, "00-4bf92f3577b34da6a3ce929d0e0e4736-0102030405060708-01")
    }

    func testNewIDsAreNeverZeroAndDiffer() {
        var seen = Set<UInt64>()
        for _ in 0..<1000 {
            let ids = Tracer.newIDs()
            XCTAssertNotEqual(ids.traceHigh | ids.traceLow, 0)
            XCTAssertNotEqual(ids.span, 0)
            seen.insert(ids.traceLow)
        }
        XCTAssertEqual(seen.count, 1000)
        let c = TraceContext(traceHigh: 0, traceLow: 1, span: 0xff, sampled: false, random: true)
        XCTAssertEqual(c.traceparent, "00-00000000000000000000000000000001-00000000000000ff-02")
    }

    /// A hop's context: a caller's trace continues (its ID and flags, a new span); without
    /// one a new trace starts, sampled at the configured rate.
    func testContextsContinueOrStartTraces() throws {
        let caller = try XCTUnwrap(TraceContext.parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03"))
        let next = Tracer(collector: "127.0.0.1:4317", sampling: 0).context(continuing: caller)
        XCTAssertEqual([next.traceHigh, next.traceLow], [caller.traceHigh, caller.traceLow])
        XCTAssertNotEqual(next.span, caller.span)
        XCTAssertTrue(next.sampled, "the caller's decision is followed, whatever the rate")
        XCTAssertTrue(next.random)
        XCTAssertFalse((0..<1000).contains { _ in Tracer(collector: "127.0.0.1:4317", sampling: 0).context(continuing: nil).sampled })
        XCTAssertTrue((0..<1000).allSatisfy { _ in Tracer(collector: "127.0.0.1:4317", sampling: 1).context(continuing: nil).sampled })
        let quarter = Tracer(collector: "127.0.0.1:4317", sampling: 0.25)
        let started = (0..<40_000).map { _ in quarter.context(continuing: nil) }
        XCTAssertEqual(Double(started.filter(\.sampled).count) / 40_000, 0.25, accuracy: 0.02)
        XCTAssertTrue(started.allSatisfy { $0.random && $0.span != 0 && $0.traceHigh | $0.traceLow != 0 })
        XCTAssertEqual(Set(started.map(\.traceLow)).count, 40_000)

        // The same from a caller's own generator (a connection's): continued or new, and drawn
        // from that generator alone (the same seed gives the same IDs).
        var g = SplitMix64(seed: 7)
        let own = Tracer(collector: "127.0.0.1:4317", sampling: 0.25)
        let continued = own.context(continuing: caller, using: &g)
        XCTAssertEqual([continued.traceHigh, continued.traceLow], [caller.traceHigh, caller.traceLow])
        XCTAssertNotEqual(continued.span, caller.span)
        XCTAssertTrue(continued.sampled)
        let drawn = (0..<40_000).map { _ in own.context(continuing: nil, using: &g) }
        XCTAssertEqual(Double(drawn.filter(\.sampled).count) / 40_000, 0.25, accuracy: 0.02)
        XCTAssertTrue(drawn.allSatisfy { $0.random && $0.span != 0 && $0.traceHigh | $0.traceLow != 0 })
        XCTAssertEqual(Set(drawn.map(\.traceLow)).count, 40_000)
        var same = SplitMix64(seed: 7)
        _ = own.context(continuing: caller, using: &same)
        let again = own.context(continuing: nil, using: &same)
        XCTAssertEqual([again.traceHigh, again.traceLow, again.span], [drawn[0].traceHigh, drawn[0].traceLow, drawn[0].span])
    }
}
