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
