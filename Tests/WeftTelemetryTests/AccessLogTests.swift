import Foundation
import WeftCore
import XCTest
@testable import WeftTelemetry

final class AccessLogFormatTests: XCTestCase {
    func labels() -> MeshLabels {
        var l = MeshLabels(reporter: .source,
                           source: PeerLabels(workload: "cart", namespace: "shop", principal: "spiffe://td/ns/shop/sa/cart", app: "cart", version: nil),
                           destination: PeerLabels(workload: "pay-1", namespace: "shop", principal: nil, app: "pay", version: nil),
                           service: ServiceLabels(host: "pay.shop.svc.cluster.local", name: "pay", namespace: "shop"),
                           requestProtocol: "http", securityPolicy: "mutual_tls")
        l.responseCode = 503
        l.responseFlags = "UF"
        return l
    }

    func entry() -> RequestLogEntry {
        var e = RequestLogEntry(startTime: Date(timeIntervalSince1970: 1_795_000_000.25), method: "POST", path: "/charge?a=\"x\"\n",
                                httpProtocol: "HTTP/1.1", authority: "pay", responseCode: 503, responseFlags: "UF", bytesReceived: 12,
                                bytesSent: 80, durationMilliseconds: 4.6, labels: labels())
        e.userAgent = "curl/8"
        e.requestID = "a-b"
        return e
    }

    func testJSONLinesParseAndEscape() throws {
        let line = AccessLog.json(entry())
        let o = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
        XCTAssertEqual(o["path"] as? String, "/charge?a=\"x\"\n")
        XCTAssertEqual(o["response_flags"] as? String, "UF")
        XCTAssertEqual(o["duration"] as? Int, 5)
        XCTAssertEqual(o["start_time"] as? String, "2026-11-18T11:06:40.250Z")
        XCTAssertEqual(o["source_principal"] as? String, "spiffe://td/ns/shop/sa/cart")
        XCTAssertNil(o["x_forwarded_for"], "absent fields are left out")
        XCTAssertFalse(line.contains("\n"))
        let tcp = AccessLog.json(ConnectionLogEntry(startTime: Date(), bytesReceived: 6, bytesSent: 6, durationMilliseconds: 1,
                                                    downstreamAddress: "10.0.0.2:5000", upstreamHost: "10.0.0.3:9000", labels: labels()))
        let t = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(tcp.utf8)) as? [String: Any])
        XCTAssertEqual(t["protocol"] as? String, "tcp")
        XCTAssertEqual(t["bytes_received"] as? Int, 6)
    }

    func testEnvoyTextFormat() {
        XCTAssertEqual(AccessLog.text(entry()),
                       #"[2026-11-18T11:06:40.250Z] "POST /charge?a=%22x%22%0A HTTP/1.1" 503 UF 12 80 5 - "-" "curl/8" "a-b" "pay" "-""#)
    }

    func testLinesReachTheFile() throws {
        let path = NSTemporaryDirectory() + "weft-al-\(UUID().uuidString).log"
        defer { try? FileManager.default.removeItem(atPath: path) }
        let log = try AccessLog(destination: path, format: .json)
        for _ in 0..<3 { log.request(entry()) }
        log.close()
        let text = try String(contentsOfFile: path, encoding: .utf8)
        XCTAssertEqual(text.split(separator: "\n").count, 3)
        XCTAssertThrowsError(try AccessLog(destination: "/nonexistent-dir/x.log", format: .json)) { error in
            XCTAssertTrue("\(error)".contains("/nonexistent-dir/x.log"), "\(error)")
        }
    }

    /// The upstream address and the trace ID are written from their bytes (no text made on
    /// the data path); the date and time of the previous line are reused only within the
    /// same second.
    func testAddressesTraceIDsAndTimesAreWrittenFromTheirValues() throws {
        var e = entry()
        e.upstream = OriginalDestination(ip: IPAddress("10.0.255.3")!, port: 8080)
        e.trace = TraceContext(traceID: Array(0..<16), spanID: Array(1...8), sampled: false)
        var o = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(AccessLog.json(e).utf8)) as? [String: Any])
        XCTAssertEqual(o["upstream_host"] as? String, "10.0.255.3:8080")
        XCTAssertEqual(o["trace_id"] as? String, "000102030405060708090a0b0c0d0e0f")
        XCTAssertEqual(o["upstream_cluster"] as? String, "pay.shop.svc.cluster.local")
        XCTAssertEqual(o["destination_workload"] as? String, "pay-1")
        e.upstream = OriginalDestination(ip: IPAddress("fd00::1")!, port: 80)
        o = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(AccessLog.json(e).utf8)) as? [String: Any])
        XCTAssertEqual(o["upstream_host"] as? String, "[fd00::1]:80")

        // Peers made for one endpoint carry its address, rendered: copied when the line goes
        // there, formatted when it goes elsewhere; once either way.
        let target = OriginalDestination(ip: IPAddress("10.0.0.7")!, port: 9090)
        e.peers = AccessLogPeers(MeshLabels(reporter: .source, source: .unknown, destination: .unknown,
                                            service: ServiceLabels(host: "pay.shop.svc.cluster.local", name: "pay", namespace: "shop"),
                                            requestProtocol: "http", securityPolicy: "none"), upstream: target)
        e.upstream = target
        var line = AccessLog.json(e)
        XCTAssertEqual(line.components(separatedBy: "\"upstream_host\"").count, 2, line)
        XCTAssertTrue(line.contains(#""upstream_host":"10.0.0.7:9090""#), line)
        e.upstream = OriginalDestination(ip: IPAddress("10.0.0.8")!, port: 9090)
        line = AccessLog.json(e)
        o = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
        XCTAssertEqual(line.components(separatedBy: "\"upstream_host\"").count, 2, line)
        XCTAssertEqual(o["upstream_host"] as? String, "10.0.0.8:9090")

        var b = LogLineBuffer(capacity: 64)
        for t in [1_795_000_000.25, 1_795_000_000.75, 1_795_000_001.0, 0.5] {
            b.timestamp(Date(timeIntervalSince1970: t))
            b.append(UInt8(ascii: " "))
        }
        XCTAssertEqual(String(decoding: b.bytes, as: UTF8.self),
                       "2026-11-18T11:06:40.250Z 2026-11-18T11:06:40.750Z 2026-11-18T11:06:41.000Z 1970-01-01T00:00:00.500Z ")
    }

    /// Connections between the same peers share one rendering of them (one copy of those
    /// bytes for the cache, not one per connection); another label set or endpoint gets its
    /// own, and the table is bounded.
    func testPeersAreRenderedOnceAndShared() throws {
        let log = try AccessLog(destination: "/dev/null", format: .json, writerThread: false)
        defer { log.close() }
        let target = OriginalDestination(ip: IPAddress("10.0.0.7")!, port: 9090)
        let a = log.peers(labels(), upstream: target)
        XCTAssertTrue(a === log.peers(labels(), upstream: target))
        XCTAssertFalse(a === log.peers(labels(), upstream: OriginalDestination(ip: IPAddress("10.0.0.8")!, port: 9090)))
        XCTAssertFalse(a === log.peers(labels(), upstream: nil))
        var other = labels()
        other.destination = PeerLabels(workload: "pay-2", namespace: "shop", principal: nil, app: "pay", version: nil)
        let b = log.peers(other, upstream: target)
        XCTAssertFalse(a === b)
        XCTAssertTrue(String(decoding: b.json, as: UTF8.self).contains(#""destination_workload":"pay-2""#))
        XCTAssertEqual(String(decoding: a.upstreamJSON, as: UTF8.self), #""upstream_host":"10.0.0.7:9090""#)
        for port in 0..<UInt16(AccessLog.maxSharedPeers + 10) {
            _ = log.peers(labels(), upstream: OriginalDestination(ip: IPAddress("10.0.0.9")!, port: port))
        }
        XCTAssertFalse(a === log.peers(labels(), upstream: target), "the table started over once full")
    }

    /// Whatever a clock or a caller hands over, a line is written and nothing traps: a date
    /// before 1970 or past year 9999 is clamped, a duration that is not finite or negative
    /// is 0, and durations round to the nearest millisecond.
    func testOutOfRangeTimesAndDurationsAreClamped() throws {
        var b = LogLineBuffer(capacity: 64)
        for t in [-1.5, 1e300, -.infinity, .nan] {
            b.timestamp(Date(timeIntervalSince1970: t))
            b.append(UInt8(ascii: " "))
        }
        XCTAssertEqual(String(decoding: b.bytes, as: UTF8.self),
                       "1970-01-01T00:00:00.000Z 9999-12-31T23:59:59.000Z 1970-01-01T00:00:00.000Z 1970-01-01T00:00:00.000Z ")
        for (ms, whole) in [(0.4, 0), (0.5, 1), (2.49, 2), (2.5, 3), (299.6, 300), (-3.0, 0), (.nan, 0), (.infinity, 0), (1e300, 1_000_000_000_000_000)] {
            XCTAssertEqual(AccessLog.wholeMilliseconds(ms), whole, "\(ms)")
        }
        var e = entry()
        e.durationMilliseconds = .nan
        let o = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(AccessLog.json(e).utf8)) as? [String: Any])
        XCTAssertEqual(o["duration"] as? Int, 0)
        e.durationMilliseconds = -.infinity
        XCTAssertTrue(AccessLog.text(e).contains(" 0 - "), AccessLog.text(e))
    }

    /// Lines from many threads at once land whole, one per line, none lost (each is
    /// formatted under the pending buffer's lock; the writer swaps buffers meanwhile).
    func testLinesFromManyThreadsStayWhole() throws {
        let path = NSTemporaryDirectory() + "weft-al-\(UUID().uuidString).log"
        defer { try? FileManager.default.removeItem(atPath: path) }
        let log = try AccessLog(destination: path, format: .json)
        let template = entry()
        DispatchQueue.concurrentPerform(iterations: 4) { thread in
            for i in 0..<2_000 {
                var e = template
                e.requestID = "t\(thread)-\(i)"
                log.request(e)
            }
        }
        log.close()
        let lines = try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(lines.count, 8_000)
        var ids = Set<String>()
        for line in lines {
            let o = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any], String(line))
            ids.insert(try XCTUnwrap(o["request_id"] as? String))
        }
        XCTAssertEqual(ids.count, 8_000)
        XCTAssertEqual(log.dropped, 0)
    }

    /// Numbers are written digit by digit: zero, negatives and the extremes stay valid JSON.
    func testIntegersAreExact() throws {
        var o = LogLineBuffer(capacity: 16)  // small: growing mid-line is exercised too
        o.openObject()
        o.int("zero", 0)
        o.int("negative", -12)
        o.int("max", Int.max)
        o.int("min", Int.min)
        o.closeObject()
        XCTAssertEqual(String(decoding: o.bytes, as: UTF8.self),
                       #"{"zero":0,"negative":-12,"max":9223372036854775807,"min":-9223372036854775808}"#)
    }

    /// The word-at-a-time check finds every byte that needs escaping, wherever it sits,
    /// and nothing else (every byte value at every position of strings up to 20 bytes).
    func testEscapingIsFoundAtEveryPosition() {
        func slow(_ b: [UInt8]) -> Bool { b.contains { $0 < 0x20 || $0 == 0x22 || $0 == 0x5c } }
        for length in 1...20 {
            for position in 0..<length {
                for value in 0...255 {
                    var bytes = [UInt8](repeating: UInt8(ascii: "a"), count: length)
                    bytes[position] = UInt8(value)
                    XCTAssertEqual(bytes.withUnsafeBufferPointer(LogLineBuffer.needsEscaping), slow(bytes), "byte \(value) at \(position) of \(length)")
                }
            }
        }
        XCTAssertFalse([UInt8]().withUnsafeBufferPointer(LogLineBuffer.needsEscaping))
        XCTAssertFalse(Array("Mozilla/5.0 (X11; Linux x86_64) é ~".utf8).withUnsafeBufferPointer(LogLineBuffer.needsEscaping))
    }

    /// The data path only queues entries; the writer formats them in order. Past the bound,
    /// entries are dropped and counted, never blocking the caller.
    func testQueuedEntriesAreBoundedAndKeepTheirOrder() throws {
        let path = NSTemporaryDirectory() + "weft-al-\(UUID().uuidString).log"
        defer { try? FileManager.default.removeItem(atPath: path) }
        let log = try AccessLog(destination: path, format: .text, maxPending: 3, writerThread: false)
        for i in 0..<5 {
            var e = entry()
            e.requestID = "r\(i)"
            log.request(e)
        }
        XCTAssertEqual(log.dropped, 2)
        log.flush()
        var e = entry()
        e.requestID = "r5"
        log.request(e)
        log.close()
        let lines = try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(lines.map { $0.contains("\"r0\"") }, [true, false, false, false])
        XCTAssertEqual(lines.compactMap { line in ["r0", "r1", "r2", "r5"].first { line.contains("\"\($0)\"") } }, ["r0", "r1", "r2", "r5"])
    }
}
