import Foundation
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

    /// Numbers are written digit by digit: zero, negatives and the extremes stay valid JSON.
    func testIntegersAreExact() throws {
        var out: [UInt8] = []
        var o = JSONLine(&out)
        o.int("zero", 0)
        o.int("negative", -12)
        o.int("max", Int.max)
        o.int("min", Int.min)
        o.finish(&out)
        XCTAssertEqual(String(decoding: out, as: UTF8.self),
                       #"{"zero":0,"negative":-12,"max":9223372036854775807,"min":-9223372036854775808}"#)
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
