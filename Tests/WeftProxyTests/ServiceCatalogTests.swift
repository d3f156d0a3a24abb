import NIOCore
import WeftCore
import XCTest
@testable import WeftProxy
import WeftConfig

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
