import NIOHTTP1
import WeftConfig
import WeftCore
import XCTest
@testable import WeftProxy

final class RouteTableTests: XCTestCase {
    func table(_ yaml: String) -> RouteTable {
        let r = ConfigParser.parse(yaml: yaml, file: "t.yaml")
        XCTAssertEqual(r.errors, [], "\(r.errors)")
        return RouteTable(resources: r.resources)
    }

    let config = """
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {name: web, namespace: shop}
        spec:
          hosts: [web]
          http:
          - match: [{headers: {x-user: {exact: beta}}}]
            route: [{destination: {host: web, subset: v2}}]
          - match: [{uri: {prefix: /old/}, method: {exact: GET}}]
            rewrite: {uri: /new/}
            headers: {request: {set: {x-routed: old}}}
            route: [{destination: {host: web, subset: v1}}]
          - match: [{uri: {regex: "/items/[0-9]+"}, port: 80}]
            route: [{destination: {host: web, subset: v1}}]
          - route:
            - {destination: {host: web, subset: v1}, weight: 90}
            - {destination: {host: web, subset: v2}, weight: 10}
        ---
        apiVersion: networking.istio.io/v1
        kind: DestinationRule
        metadata: {name: web, namespace: shop}
        spec:
          host: web.shop.svc.cluster.local
          subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
        """

    func facts(_ path: String, method: String = "GET", headers: [String: String] = [:], port: UInt16 = 80) -> RequestFacts {
        RequestFacts(method: method, path: path, headers: headers, port: port)
    }

    func subset(_ d: RouteDecision) -> String? {
        if case .destination(let r) = d { return r.subset }
        return nil
    }

    func testOrderedFirstMatch() {
        let t = table(config)
        let host = "web.shop.svc.cluster.local"
        XCTAssertEqual(subset(t.decide(host: host, facts: facts("/old/x", headers: ["x-user": "beta"]), random: 0.95)), "v2",
                       "the header rule comes first")
        XCTAssertEqual(subset(t.decide(host: host, facts: facts("/old/x"), random: 0.95)), "v1")
        XCTAssertEqual(subset(t.decide(host: host, facts: facts("/old/x", method: "POST"), random: 0.95)), "v2",
                       "method does not match: falls to the split, 0.95 → v2")
        XCTAssertEqual(subset(t.decide(host: host, facts: facts("/items/42"), random: 0.99)), "v1")
        XCTAssertEqual(subset(t.decide(host: host, facts: facts("/items/42x"), random: 0.99)), "v2", "regexes match the whole path")
        XCTAssertEqual(subset(t.decide(host: host, facts: facts("/items/42", port: 81), random: 0.99)), "v2", "port condition")
        if case .destination(let r) = t.decide(host: host, facts: facts("/old/a/b"), random: 0) {
            XCTAssertEqual(r.subsetLabels, ["version": "v1"])
            XCTAssertEqual(RouteTable.rewritePath("/old/a/b", rewrite: r.rewrite!.uri!, match: r.matchedURI), "/new/a/b")
            XCTAssertEqual(r.requestHeaders.first?.set, ["x-routed": "old"])
        } else { XCTFail("rewrite route") }
        XCTAssertEqual(t.decide(host: "other.shop.svc.cluster.local", facts: facts("/"), random: 0), .defaultRoute)
    }

    func testWeightsSplitByTheRandomDraw() {
        let t = table(config)
        var counts: [String: Int] = [:]
        for i in 0..<1000 {
            counts[subset(t.decide(host: "web.shop.svc.cluster.local", facts: facts("/"), random: Double(i) / 1000)) ?? "none", default: 0] += 1
        }
        XCTAssertEqual(counts, ["v1": 900, "v2": 100])
    }

    func testNoMatchingRoute() {
        let t = table("""
            apiVersion: networking.istio.io/v1
            kind: VirtualService
            metadata: {name: api}
            spec:
              hosts: [api]
              http: [{match: [{uri: {prefix: /v2}}], route: [{destination: {host: api}}]}]
            """)
        XCTAssertEqual(t.decide(host: "api.default.svc.cluster.local", facts: facts("/v1"), random: 0), .noMatch(virtualService: "default/api"))
    }
}

/// A request's facts look its headers up where they are (case-insensitive, the first value),
/// as the hand-made facts' lowercased dictionary does.
final class RequestFactsTests: XCTestCase {
    func testHeadersAreLookedUpInTheRequest() {
        let facts = RequestFacts(method: "GET", path: "/", head: HTTPHeaders([("X-User", "ann"), ("x-user", "bob"), ("Cookie", "a=1")]), port: 80)
        XCTAssertEqual(facts.header("x-user"), "ann")
        XCTAssertEqual(facts.header("X-USER"), "ann")
        XCTAssertEqual(facts.header("cookie"), "a=1")
        XCTAssertNil(facts.header("x-missing"))
        XCTAssertTrue(facts.headers.isEmpty)
        let made = RequestFacts(method: "GET", path: "/", headers: ["x-user": "cy"], port: 80)
        XCTAssertEqual(made.header("X-User"), "cy")
    }
}
