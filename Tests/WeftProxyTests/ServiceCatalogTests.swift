import NIOCore
import WeftCore
import XCTest
@testable import WeftProxy
import WeftConfig
import WeftAgent

final class ServiceCatalogTests: XCTestCase {
    func workload(_ name: String, service: String, ns: String = "default", ip: String, ip6: String? = nil,
                  ports: [String] = [], labels: [String: String] = [:]) -> WorkloadSpec {
        WorkloadSpec(name: name, netns: try! NetnsName(name), service: try! ServiceName(service), namespace: try! MeshNamespace(ns),
                     ports: ports.map { try! PortMapping(parsing: $0) }, labels: labels, podIP: IPAddress(ip)).with(ip6)
    }

    func catalog() -> ServiceCatalog {
        try! ServiceCatalog(vipRange: CIDR("240.240.0.0/16")!, vip6Prefix: CIDR("fd77:7765:6674:ffff::/96")!)
    }

    func testVIPsAreAllocatedOnceAndKeptWhileEndpointsChange() throws {
        var c = catalog()
        try c.rebuild(from: [workload("web-a", service: "web", ip: "10.0.0.2", ports: ["80:3000/http"]),
                             workload("db-1", service: "db", ip: "10.0.0.3")])
        let web = try XCTUnwrap(c.entries[ServiceKey(name: try ServiceName("web"), namespace: .default)])
        XCTAssertEqual(web.vip, IPAddress("240.240.0.2"), "sorted by workload name: db-1 first, then web-a")
        XCTAssertEqual(web.vip6?.description, "fd77:7765:6674:ffff:0:0:f0f0:2".replacingOccurrences(of: ":0:0:", with: "::"))
        XCTAssertEqual(web.ports.map(\.description), ["80:3000/http"])
        try c.rebuild(from: [])
        let gone = try XCTUnwrap(c.entries[web.key])
        XCTAssertEqual(gone.vip, web.vip, "a service keeps its VIP with no endpoints")
        XCTAssertEqual(gone.endpoints, [])
        try c.rebuild(from: [workload("web-b", service: "web", ip: "10.0.0.9")])
        XCTAssertEqual(c.entries[web.key]?.vip, web.vip)
        XCTAssertEqual(c.entries[web.key]?.endpoints.map(\.workload), ["web-b"])
    }

    func testSameNameInTwoNamespacesIsTwoServices() throws {
        var c = catalog()
        try c.rebuild(from: [workload("a", service: "web", ns: "shop", ip: "10.0.0.2"),
                             workload("b", service: "web", ns: "blog", ip: "10.0.0.3")])
        XCTAssertEqual(c.statuses.map(\.key.description), ["web.blog", "web.shop"])
        XCTAssertNotEqual(c.statuses[0].vip, c.statuses[1].vip)
    }

    func testResolveTable() throws {
        var c = catalog()
        try c.rebuild(from: [workload("web-a", service: "web", ip: "10.0.0.2", ip6: "fd77::2", ports: ["80:3000"]),
                             workload("web-b", service: "web", ip: "10.0.0.3", ports: ["80:3001"]),
                             workload("raw-1", service: "raw", ip: "10.0.0.4")])
        let web = try XCTUnwrap(c.service(forVIP: IPAddress("240.240.0.2")!))
        XCTAssertEqual(web.key.name.rawValue, "web")
        XCTAssertEqual(web.resolve(port: 80, family: .v4) { _ in 0 },
                       .endpoint(OriginalDestination(ip: IPAddress("10.0.0.2")!, port: 3000), service: web.key, workload: "web-a"))
        XCTAssertEqual(web.resolve(port: 80, family: .v4) { _ in 1 },
                       .endpoint(OriginalDestination(ip: IPAddress("10.0.0.3")!, port: 3001), service: web.key, workload: "web-b"),
                       "each endpoint's own target port")
        XCTAssertEqual(web.resolve(port: 80, family: .v6) { _ in 0 },
                       .endpoint(OriginalDestination(ip: IPAddress("fd77::2")!, port: 3000), service: web.key, workload: "web-a"))
        XCTAssertEqual(web.resolve(port: 81, family: .v4) { _ in 0 }, .unknownPort(web.key, 81))
        let raw = try XCTUnwrap(c.service(forVIP: IPAddress("240.240.0.1")!))
        XCTAssertEqual(raw.resolve(port: 5432, family: .v4) { _ in 0 },
                       .endpoint(OriginalDestination(ip: IPAddress("10.0.0.4")!, port: 5432), service: raw.key, workload: "raw-1"),
                       "no declared ports: the port passes through")
        try c.rebuild(from: [])
        XCTAssertEqual(c.service(forVIP: IPAddress("240.240.0.2")!)?.resolve(port: 80, family: .v4) { _ in 0 }, .noEndpoints(web.key))
        XCTAssertNil(c.service(forVIP: IPAddress("10.0.0.2")!))
    }

    func testDirectoryRoundRobinIsPerService() throws {
        var c = catalog()
        try c.rebuild(from: [workload("a1", service: "a", ip: "10.0.1.1"), workload("a2", service: "a", ip: "10.0.1.2"),
                             workload("b1", service: "b", ip: "10.0.2.1"), workload("b2", service: "b", ip: "10.0.2.2")])
        let d = ServiceDirectory()
        d.publish(c)
        let vipA = OriginalDestination(ip: c.statuses[0].vip, port: 80), vipB = OriginalDestination(ip: c.statuses[1].vip, port: 80)
        var seenA: [String] = []
        for _ in 0..<4 {
            if case .endpoint(_, _, let w) = d.resolve(vipA) { seenA.append(w) }
            _ = d.resolve(vipB)  // interleaved calls to another service must not skew a's rotation
        }
        XCTAssertEqual(seenA, ["a1", "a2", "a1", "a2"])
        XCTAssertEqual(d.resolve(OriginalDestination(ip: IPAddress("10.9.9.9")!, port: 80)), .passthrough)
    }
}

final class PortProtocolTests: XCTestCase {
    func testDeclaredProtocolsApplyToVIPsAndPodAddresses() throws {
        var c = try ServiceCatalog(vipRange: CIDR("240.240.0.0/16")!, vip6Prefix: nil)
        let spec = WorkloadSpec(name: "db", netns: try NetnsName("db"), service: try ServiceName("db"), namespace: try MeshNamespace("default"),
                                ports: [try PortMapping(parsing: "5432/tcp"), try PortMapping(parsing: "80:8080/http")], labels: [:],
                                podIP: IPAddress("10.0.3.1"))
        try c.rebuild(from: [spec])
        let d = ServiceDirectory()
        d.publish(c)
        let vip = c.statuses[0].vip
        XCTAssertEqual(d.portProtocol(OriginalDestination(ip: vip, port: 5432)), .tcp)
        XCTAssertEqual(d.portProtocol(OriginalDestination(ip: vip, port: 80)), .http)
        XCTAssertEqual(d.portProtocol(OriginalDestination(ip: IPAddress("10.0.3.1")!, port: 5432)), .tcp, "pod address, target port")
        XCTAssertEqual(d.portProtocol(OriginalDestination(ip: IPAddress("10.0.3.1")!, port: 8080)), .http)
        XCTAssertNil(d.portProtocol(OriginalDestination(ip: IPAddress("10.0.3.1")!, port: 9999)))
        XCTAssertNil(d.portProtocol(OriginalDestination(ip: IPAddress("10.0.9.9")!, port: 5432)))
    }
}

extension WorkloadSpec {
    func with(_ ip6: String?) -> WorkloadSpec {
        var s = self
        s.podIPv6 = ip6.flatMap(IPAddress.init)
        return s
    }
}

/// A subset's own trafficPolicy (connectionPool, outlierDetection) applies to requests routed
/// to that subset, counted apart from the rest of the host.
final class SubsetTrafficPolicyTests: XCTestCase {
    func testASubsetsOwnPoolAndOutlierDetection() throws {
        var c = try ServiceCatalog(vipRange: CIDR("240.240.0.0/16")!, vip6Prefix: nil)
        func spec(_ name: String, _ ip: String, _ version: String) throws -> WorkloadSpec {
            WorkloadSpec(name: name, netns: try NetnsName(name), service: try ServiceName("web"), namespace: .default,
                         ports: [try PortMapping(parsing: "80:8000/http")], labels: ["version": version], podIP: IPAddress(ip))
        }
        try c.rebuild(from: [try spec("web-1", "10.0.0.2", "v1"), try spec("web-2", "10.0.0.3", "v2"), try spec("web-3", "10.0.0.4", "v2")])
        let d = ServiceDirectory()
        d.publish(c)
        let parsed = ConfigParser.parse(yaml: """
            apiVersion: networking.istio.io/v1
            kind: DestinationRule
            metadata: {name: web}
            spec:
              host: web
              trafficPolicy: {connectionPool: {tcp: {maxConnections: 100}}}
              subsets:
              - {name: v1, labels: {version: v1}}
              - name: v2
                labels: {version: v2}
                trafficPolicy:
                  connectionPool: {tcp: {maxConnections: 1}}
                  outlierDetection: {consecutive5xxErrors: 1, maxEjectionPercent: 50}
            ---
            apiVersion: networking.istio.io/v1
            kind: VirtualService
            metadata: {name: web}
            spec:
              hosts: [web]
              http:
              - match: [{headers: {x-v: {exact: "2"}}}]
                route: [{destination: {host: web, subset: v2}}]
              - route: [{destination: {host: web, subset: v1}}]
            """, file: "s.yaml")
        XCTAssertEqual(parsed.errors, [])
        d.publish(routes: RouteTable(resources: parsed.resources))
        let vip = OriginalDestination(ip: c.statuses[0].vip, port: 80)
        func lease(_ headers: [String: String]) throws -> EndpointLease {
            guard case .endpoint(_, _, _, _, let lease) = d.route(vip, facts: RequestFacts(method: "GET", path: "/", headers: headers, port: 80)) else {
                throw XCTSkip("no endpoint")
            }
            return lease
        }
        let v1 = try lease([:]), v2 = try lease(["x-v": "2"])
        XCTAssertEqual(v1.limits?.maxConnections, 100, "the host's pool")
        XCTAssertEqual(v1.limiterKey, "web.default.svc.cluster.local")
        XCTAssertEqual(v2.limits?.maxConnections, 1, "the subset's own pool")
        XCTAssertEqual(v2.limiterKey, "web.default.svc.cluster.local/v2", "counted apart")
        // v2's outlierDetection: one 5xx ejects (up to half of v2's two endpoints); v1 has none.
        let now = NIODeadline.now().uptimeNanoseconds  // what the picks compare ejections with
        d.recordOutcome(v2, status: 503, now: now)
        XCTAssertEqual(d.ejected(host: "web.default.svc.cluster.local", now: now), [v2.workload])
        d.recordOutcome(v1, status: 503, now: now)
        XCTAssertEqual(d.ejected(host: "web.default.svc.cluster.local", now: now), [v2.workload], "v1 has no outlier detection")
        for _ in 0..<4 { XCTAssertNotEqual(try lease(["x-v": "2"]).workload, v2.workload, "the ejected v2 endpoint is skipped") }
    }
}

final class ProxyConfigViewTests: XCTestCase {
    func testRoutesClustersEndpointsAndDurations() throws {
        let parsed = ConfigParser.parse(yaml: """
            apiVersion: networking.istio.io/v1
            kind: VirtualService
            metadata: {name: web}
            spec:
              hosts: [web]
              http:
              - match: [{uri: {prefix: /api}, headers: {x-v: {exact: "2"}}}]
                route: [{destination: {host: web, subset: v2}, weight: 90}, {destination: {host: web, subset: v1}, weight: 10}]
                retries: {attempts: 2, retryOn: 5xx}
              - route: [{destination: {host: web}}]
            ---
            apiVersion: networking.istio.io/v1
            kind: DestinationRule
            metadata: {name: web}
            spec: {host: web, trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x-user}}}}
            """, file: "t.yaml")
        XCTAssertEqual(parsed.errors, [])
        let routes = ProxyConfigView.routes(parsed.resources)
        XCTAssertEqual(routes.map(\.name), ["#0", "#1"])
        XCTAssertEqual(routes[0].match, "uri /api* x-v =2")
        XCTAssertEqual(routes[0].destinations, "web/v2 90%, web/v1 10%")
        XCTAssertEqual(routes[0].retries, "2× 5xx")
        XCTAssertEqual(routes[1].match, "*")
        let spec = WorkloadSpec(name: "web-1", netns: try NetnsName("web-1"), service: try ServiceName("web"), namespace: .default,
                                ports: [try PortMapping(parsing: "80:8000/http")], labels: ["version": "v2"], podIP: IPAddress("10.0.0.2"))
        var c = try ServiceCatalog(vipRange: CIDR("240.240.0.0/16")!, vip6Prefix: nil)
        try c.rebuild(from: [spec])
        var status = c.statuses[0]
        status.ejected = ["web-1"]
        XCTAssertEqual(ProxyConfigView.clusters([status], resources: parsed.resources).first?.loadBalancer, "CONSISTENT_HASH header x-user")
        let e = try XCTUnwrap(ProxyConfigView.endpoints([status]).first)
        XCTAssertEqual([e.endpoint, e.service, e.workload, e.status, e.labels],
                       ["10.0.0.2:8000", "web.default.svc.cluster.local", "web-1", "EJECTED", "version=v2"])
        XCTAssertEqual([IstioDuration.format(.milliseconds(300)), IstioDuration.format(.seconds(2)), IstioDuration.format(.seconds(90)),
                        IstioDuration.format(.seconds(3600))], ["300ms", "2s", "1m30s", "1h"])
    }
}

final class TopViewTests: XCTestCase {
    static func exposition(ok: Int, failed: Int, buckets: [(String, Int)]) -> String {
        let l = #"reporter="source",source_workload="cli",source_workload_namespace="shop",destination_service="web.shop.svc.cluster.local""#
        var lines = [#"# TYPE istio_requests_total counter"#,
                     #"istio_requests_total{\#(l),response_code="200",response_flags="-"} \#(ok)"#,
                     #"istio_requests_total{\#(l),response_code="503",response_flags="UF"} \#(failed)"#,
                     #"istio_requests_total{reporter="destination",source_workload="x",destination_service="y"} 99"#]
        for (le, n) in buckets { lines.append(#"istio_request_duration_milliseconds_bucket{\#(l),response_code="200",le="\#(le)"} \#(n)"#) }
        return lines.joined(separator: "\n")
    }

    func testRatesErrorsAndPercentiles() throws {
        let before = TopView.parse(Self.exposition(ok: 10, failed: 0, buckets: [("1.0", 0), ("5.0", 10), ("10.0", 10), ("+Inf", 10)]))
        let after = TopView.parse(Self.exposition(ok: 100, failed: 10, buckets: [("1.0", 0), ("5.0", 60), ("10.0", 100), ("+Inf", 100)]))
        XCTAssertEqual(after.count, 1, "destination-side series are not pairs of the source view")
        let rows = TopView.rows(previous: before, current: after, seconds: 2)
        let row = try XCTUnwrap(rows.first)
        XCTAssertEqual([row.pair.source, row.pair.destination], ["cli.shop", "web.shop.svc.cluster.local"])
        XCTAssertEqual(row.requestsPerSecond, 50, "100 new requests in 2 s")
        XCTAssertEqual(row.errorRatio, 0.1, accuracy: 1e-9)
        XCTAssertEqual(try XCTUnwrap(row.p50), 4.6, accuracy: 0.01, "rank 45 of 90 new: 50 in (1, 5], so 1 + 4 × 45/50")
        XCTAssertEqual(try XCTUnwrap(row.p99), 9.8875, accuracy: 0.01, "rank 89.1: 5 + 5 × 39.1/40")
        XCTAssertEqual(TopView.rows(previous: after, current: after, seconds: 2), [], "no new requests: no row")
        XCTAssertTrue(TopView.render(rows, interval: 2, source: "x").contains("cli.shop"))
    }
}
