import Foundation
import XCTest
@testable import WeftTelemetry

final class MeshMetricsTests: XCTestCase {
    func labels(_ n: Int, code: Int = 200) -> MeshLabels {
        var l = MeshLabels(reporter: .source,
                           source: PeerLabels(workload: "cart-\(n)", namespace: "shop", principal: "spiffe://td/ns/shop/sa/cart", app: "cart", version: nil),
                           destination: PeerLabels(workload: "pay-1", namespace: "shop", principal: nil, app: "pay", version: "v2"),
                           service: ServiceLabels(host: "pay.shop.svc.cluster.local", name: "pay", namespace: "shop"),
                           requestProtocol: "http", securityPolicy: "mutual_tls")
        l.responseCode = code
        return l
    }

    func testIstioNamesAndLabels() {
        let m = MeshMetrics()
        m.recordRequest(labels(1), durationMilliseconds: 3, requestBytes: 120, responseBytes: 2048)
        m.recordRequest(labels(1), durationMilliseconds: 7, requestBytes: 120, responseBytes: 2048)
        m.recordRequest(labels(1, code: 503), durationMilliseconds: 1, requestBytes: 120, responseBytes: 10)
        let text = m.exposition()
        XCTAssertTrue(text.contains("# TYPE istio_requests_total counter"), text)
        XCTAssertTrue(text.contains("# TYPE istio_request_duration_milliseconds histogram"), text)
        let ok = #"istio_requests_total{reporter="source",source_workload="cart-1",source_workload_namespace="shop",source_principal="spiffe://td/ns/shop/sa/cart",source_app="cart",source_version="unknown",source_canonical_service="cart",source_canonical_revision="unknown",destination_workload="pay-1",destination_workload_namespace="shop",destination_principal="unknown",destination_app="pay",destination_version="v2",destination_canonical_service="pay",destination_canonical_revision="v2",destination_service="pay.shop.svc.cluster.local",destination_service_name="pay",destination_service_namespace="shop",request_protocol="http",connection_security_policy="mutual_tls",response_code="200",grpc_response_status="",response_flags="-"} 2"#
        XCTAssertTrue(text.contains(ok), text)
        XCTAssertTrue(text.contains(#"response_code="503",grpc_response_status="",response_flags="-"} 1"#))
        XCTAssertTrue(text.contains(#"response_code="200",grpc_response_status="",response_flags="-",le="5.0"} 1"#), "3 ms ≤ 5: \(text)")
        XCTAssertTrue(text.contains(#"response_code="200",grpc_response_status="",response_flags="-",le="10.0"} 2"#), "and 7 ms ≤ 10")
    }

    /// Each request adds to one bucket per histogram; the exposition sums them into
    /// Prometheus's cumulative buckets (+Inf and _count equal to the requests), with the sums
    /// in milliseconds and bytes, and label values escaped.
    func testRequestSeriesHistograms() {
        let m = MeshMetrics()
        var l = labels(1)
        l.service = ServiceLabels(host: #"odd"host\x"#, name: "a\nb", namespace: "shop")
        let s = m.requestSeries(l)
        XCTAssertTrue(m.requestSeries(l) === s, "one series per label set")
        m.record(s, durationNanoseconds: 300_000, requestBytes: 0, responseBytes: 1)         // 0.3 ms ≤ 0.5; 0 ≤ 1; 1 ≤ 1
        m.record(s, durationNanoseconds: 1_000_000, requestBytes: 10, responseBytes: 11)     // 1 ms ≤ 1 (le is inclusive)
        m.record(s, durationMilliseconds: 7.5, requestBytes: 5_000, responseBytes: 2_000_000_000)  // past the last size bound
        m.record(s, durationMilliseconds: 5_000_000, requestBytes: 100, responseBytes: 100)  // past the last duration bound
        let text = m.exposition()
        let at = #"le=""#
        func bucket(_ name: String, _ le: String) -> String? {
            text.split(separator: "\n").first { $0.hasPrefix(name + "_bucket{") && $0.contains(at + le + "\"}") }.map { String($0.split(separator: " ").last!) }
        }
        let cumulative: [(family: String, le: String, count: String)] = [
            ("istio_request_duration_milliseconds", "0.5", "1"),
            ("istio_request_duration_milliseconds", "1.0", "2"),
            ("istio_request_duration_milliseconds", "5.0", "2"),
            ("istio_request_duration_milliseconds", "10.0", "3"),
            ("istio_request_duration_milliseconds", "3600000.0", "3"),
            ("istio_request_duration_milliseconds", "+Inf", "4"),
            ("istio_request_bytes", "1.0", "1"),
            ("istio_request_bytes", "10.0", "2"),
            ("istio_request_bytes", "100.0", "3"),
            ("istio_request_bytes", "10000.0", "4"),
            ("istio_response_bytes", "1.0", "1"),
            ("istio_response_bytes", "1000000000.0", "3"),
            ("istio_response_bytes", "+Inf", "4"),
        ]
        for b in cumulative { XCTAssertEqual(bucket(b.family, b.le), b.count, "\(b.family) le=\(b.le)\n\(text)") }
        XCTAssertTrue(text.contains("istio_request_duration_milliseconds_sum{"), text)
        let sum = text.split(separator: "\n").first { $0.hasPrefix("istio_request_duration_milliseconds_sum{") }?.split(separator: " ").last
        XCTAssertEqual(sum.flatMap { Double($0) } ?? 0, 5_000_008.8, accuracy: 1e-6)
        XCTAssertTrue(text.contains(#"istio_request_bytes_sum{"#) && text.contains(#"} 5110.0"#), text)
        XCTAssertTrue(text.contains(#"istio_request_duration_milliseconds_count{"#) && text.contains(#"response_flags="-"} 4"#), text)
        XCTAssertTrue(text.contains(#"destination_service="odd\"host\\x",destination_service_name="a\nb""#), text)
        XCTAssertEqual(text.components(separatedBy: "# TYPE istio_request_bytes histogram").count, 2, "one TYPE line per family")
        XCTAssertEqual(MeshMetrics().exposition().contains("istio_requests_total"), false, "no family before its first series")

        // Durations from any source: nothing a Double can hold stops the recording.
        let odd = m.requestSeries(labels(2))
        for ms in [Double.nan, .infinity, -.infinity, -5, 1e300] {
            m.record(odd, durationMilliseconds: ms, requestBytes: -1, responseBytes: .max)
        }
        m.record(odd, durationNanoseconds: -7, requestBytes: 1, responseBytes: 1)
        XCTAssertTrue(m.exposition().contains(#"source_workload="cart-2""#) && m.exposition().contains(#"response_flags="-"} 6"#))
    }

    /// Recording from several threads at once loses nothing, and an exposition taken meanwhile
    /// is consistent (+Inf equals _count).
    func testRequestSeriesConcurrentRecording() {
        let m = MeshMetrics()
        let s = m.requestSeries(labels(1))
        DispatchQueue.concurrentPerform(iterations: 4) { t in
            for i in 0..<25_000 {
                m.record(s, durationNanoseconds: Int64(i % 7) * 1_000_000, requestBytes: i % 300, responseBytes: 10)
                if t == 0, i % 5_000 == 0 { _ = m.exposition() }
            }
        }
        let text = m.exposition()
        XCTAssertTrue(text.contains(#"response_flags="-"} 100000"#), text)
        XCTAssertTrue(text.contains(#"istio_response_bytes_bucket{"#) && text.contains(#"le="10.0"} 100000"#), text)
    }

    func testTCPSeriesCountBytesAndCloses() {
        let m = MeshMetrics()
        var l = labels(1)
        l.requestProtocol = "tcp"
        let s = m.tcpOpened(l)
        s.add(sent: 10, received: 4)
        s.close()
        let text = m.exposition()
        XCTAssertTrue(text.contains(#"connection_security_policy="mutual_tls"} 1"#))
        XCTAssertTrue(text.contains("istio_tcp_sent_bytes_total{"))
        XCTAssertFalse(text.contains(#"response_code"#), "TCP series carry no response labels")
    }

    func testCardinalityIsBounded() {
        let m = MeshMetrics(maxSeries: 3)
        for n in 0..<10 { m.recordRequest(labels(n), durationMilliseconds: 1, requestBytes: 1, responseBytes: 1) }
        XCTAssertEqual(m.seriesCount.requests, 4, "three series, then one overflow series")
        let text = m.exposition()
        XCTAssertTrue(text.contains(#"source_workload="overflow""#) && text.contains("weft_metrics_series_overflow_total 7"), text)
    }
}
