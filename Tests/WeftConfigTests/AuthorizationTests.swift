import WeftCore
import XCTest
@testable import WeftConfig

final class AuthorizationTests: XCTestCase {
    let yaml = """
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: deny-blocked, namespace: shop}
        spec:
          action: DENY
          rules:
          - from: [{source: {principals: ["*/sa/blocked"]}}]
        ---
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: readers, namespace: shop}
        spec:
          selector: {matchLabels: {app: web}}
          rules:
          - from: [{source: {namespaces: [shop]}}]
            to: [{operation: {methods: [GET, HEAD], paths: ["/public/*"]}}]
          - from: [{source: {principals: [weft.local/ns/shop/sa/admin]}}]
            to: [{operation: {methods: [POST], paths: [/admin]}}]
            when: [{key: "request.headers[x-token]", values: ["t-*"]}]
        ---
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: tcp-ops, namespace: shop}
        spec:
          selector: {matchLabels: {app: web}}
          rules:
          - from: [{source: {ipBlocks: [10.9.0.0/16]}}]
            to: [{operation: {ports: ["9000"]}}]
        """

    func policies() -> [AuthorizationPolicy] {
        let r = ConfigParser.parse(yaml: yaml, file: "authz.yaml")
        XCTAssertEqual(r.diagnostics.filter { $0.severity == .error }.map(\.description), [])
        return r.resources.compactMap { if case .authorizationPolicy(let p) = $0 { p } else { nil } }
            .filter { $0.applies(toNamespace: "shop", labels: ["app": "web"]) }
    }

    func http(_ sa: String?, ns: String = "shop", _ method: String, _ path: String, headers: [String: String] = [:],
              ip: String = "10.1.0.5", port: UInt16 = 3000) -> AuthorizationDecision {
        let principal = sa.map { "spiffe://weft.local/ns/\(ns)/sa/\($0)" }
        let req = AuthorizationRequest(principal: principal, sourceIP: IPAddress(ip), port: port,
                                       http: .init(method: method, path: path, host: "web", headers: headers))
        return Authorization.decide(req, policies: policies())
    }

    func allowed(_ d: AuthorizationDecision) -> Bool { d == .allow }

    func testMatrixOfPrincipalsPathsAndMethods() {
        XCTAssertEqual(policies().count, 3)
        XCTAssertTrue(allowed(http("reader", "GET", "/public/a.txt")))
        XCTAssertTrue(allowed(http("reader", "HEAD", "/public/")))
        XCTAssertFalse(allowed(http("reader", "POST", "/public/a.txt")), "method not allowed")
        XCTAssertFalse(allowed(http("reader", "GET", "/private")), "path not allowed")
        XCTAssertFalse(allowed(http("reader", ns: "other", "GET", "/public/a.txt")), "namespace not allowed")
        XCTAssertFalse(allowed(http(nil, "GET", "/public/a.txt")), "plaintext has no namespace")
        XCTAssertTrue(allowed(http("admin", "POST", "/admin", headers: ["x-token": "t-1"])))
        XCTAssertFalse(allowed(http("admin", "POST", "/admin")), "when: header missing")
        XCTAssertFalse(allowed(http("admin", "POST", "/admin", headers: ["x-token": "bad"])))
        XCTAssertFalse(allowed(http("reader", "POST", "/admin", headers: ["x-token": "t-1"])), "only admin may POST /admin")
        if case .deny(let policy, _) = http("blocked", "GET", "/public/a.txt") {
            XCTAssertEqual(policy, "shop/deny-blocked", "DENY is evaluated first")
        } else {
            XCTFail("blocked must be denied")
        }
    }

    func testConnectionsWithoutHTTPFailClosed() {
        let tcp = { (sa: String, ip: String, port: UInt16) in
            Authorization.decide(AuthorizationRequest(principal: "spiffe://weft.local/ns/shop/sa/\(sa)", sourceIP: IPAddress(ip), port: port),
                                 policies: self.policies())
        }
        // ALLOW rules with HTTP fields never match a TCP connection; the port rule does.
        XCTAssertFalse(allowed(tcp("reader", "10.1.0.5", 3000)))
        XCTAssertTrue(allowed(tcp("reader", "10.9.3.4", 9000)))
        XCTAssertFalse(allowed(tcp("reader", "10.9.3.4", 9001)))
        // DENY rules keep matching without their HTTP fields.
        XCTAssertFalse(allowed(tcp("blocked", "10.9.3.4", 9000)))
    }

    func testNoPoliciesAllowAndAllowNothingDenies() {
        XCTAssertEqual(Authorization.decide(AuthorizationRequest(principal: nil, sourceIP: nil, port: 1), policies: []), .allow)
        let r = ConfigParser.parse(yaml: """
            apiVersion: security.istio.io/v1
            kind: AuthorizationPolicy
            metadata: {name: allow-nothing, namespace: shop}
            spec: {}
            """, file: "a.yaml")
        XCTAssertTrue(r.diagnostics.contains { $0.severity == .warning && $0.description.contains("allows nothing") })
        let p = r.resources.compactMap { if case .authorizationPolicy(let p) = $0 { p } else { nil } }
        XCTAssertNotEqual(Authorization.decide(AuthorizationRequest(principal: "spiffe://weft.local/ns/shop/sa/x", sourceIP: nil, port: 1), policies: p), .allow)
    }

    func testBadPoliciesAreRefused() {
        let r = ConfigParser.parse(yaml: """
            apiVersion: security.istio.io/v1
            kind: AuthorizationPolicy
            metadata: {name: x, namespace: shop}
            spec:
              action: AUDIT
            ---
            apiVersion: security.istio.io/v1
            kind: AuthorizationPolicy
            metadata: {name: y, namespace: shop}
            spec:
              rules:
              - to: [{operation: {ports: ["http"]}}]
                when: [{key: "request.auth.claims[iss]", values: [a]}]
            """, file: "a.yaml")
        let errors = r.diagnostics.filter { $0.severity == .error }.map(\.description).joined(separator: "\n")
        XCTAssertTrue(errors.contains("AUDIT"), errors)
        XCTAssertTrue(errors.contains("not a port number"), errors)
    }
}
