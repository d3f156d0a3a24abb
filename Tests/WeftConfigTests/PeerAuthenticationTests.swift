import WeftCore
import XCTest
@testable import WeftConfig

final class PeerAuthenticationTests: XCTestCase {
    func policies(_ yaml: String) throws -> [PeerAuthenticationPolicy] {
        let r = ConfigParser.parse(yaml: yaml, file: "pa.yaml")
        XCTAssertEqual(r.diagnostics.filter { $0.severity == .error }.map(\.description), [])
        return r.resources.compactMap { if case .peerAuthentication(let p) = $0 { p } else { nil } }
    }

    func testMostSpecificPolicyWins() throws {
        let all = try policies("""
            apiVersion: security.istio.io/v1
            kind: PeerAuthentication
            metadata: {name: default, namespace: weft-system}
            spec: {mtls: {mode: STRICT}}
            ---
            apiVersion: security.istio.io/v1beta1
            kind: PeerAuthentication
            metadata: {name: shop, namespace: shop}
            spec: {mtls: {mode: PERMISSIVE}}
            ---
            apiVersion: security.istio.io/v1beta1
            kind: PeerAuthentication
            metadata: {name: web, namespace: shop}
            spec:
              selector: {matchLabels: {app: web}}
              mtls: {mode: UNSET}
              portLevelMtls:
                8080: {mode: DISABLE}
            """)
        XCTAssertEqual(all.count, 3)
        func mode(_ ns: String, _ labels: [String: String], _ port: UInt16) -> PeerAuthenticationPolicy.Mode {
            PeerAuthenticationPolicy.mode(namespace: ns, labels: labels, port: port, policies: all)
        }
        XCTAssertEqual(mode("default", [:], 80), .STRICT, "mesh-wide")
        XCTAssertEqual(mode("shop", [:], 80), .PERMISSIVE, "namespace beats mesh")
        XCTAssertEqual(mode("shop", ["app": "web"], 80), .PERMISSIVE, "UNSET inherits the namespace's")
        XCTAssertEqual(mode("shop", ["app": "web"], 8080), .DISABLE, "port level beats everything")
        XCTAssertEqual(mode("shop", ["app": "api"], 8080), .PERMISSIVE, "selector does not match")
        XCTAssertEqual(PeerAuthenticationPolicy.mode(namespace: "x", labels: [:], port: 1, policies: []), .PERMISSIVE, "default")
    }

    func testBadPoliciesAreRefusedWithLineAndReason() {
        let bad = ConfigParser.parse(yaml: """
            apiVersion: security.istio.io/v1
            kind: PeerAuthentication
            metadata: {name: x, namespace: shop}
            spec:
              mtls: {mode: STRICTER}
            """, file: "pa.yaml")
        XCTAssertTrue(bad.diagnostics.contains { $0.description.contains("pa.yaml:5") && $0.description.contains("STRICT, PERMISSIVE, DISABLE, UNSET") },
                      bad.diagnostics.map(\.description).joined(separator: "\n"))
        let portsWithoutSelector = ConfigParser.parse(yaml: """
            apiVersion: security.istio.io/v1
            kind: PeerAuthentication
            metadata: {name: x, namespace: shop}
            spec:
              portLevelMtls:
                80: {mode: DISABLE}
            """, file: "pa.yaml")
        XCTAssertTrue(portsWithoutSelector.diagnostics.contains { $0.description.contains("portLevelMtls needs a selector") })
        let wrongVersion = ConfigParser.parse(yaml: """
            apiVersion: networking.istio.io/v1
            kind: PeerAuthentication
            metadata: {name: x}
            spec: {}
            """, file: "pa.yaml")
        XCTAssertTrue(wrongVersion.diagnostics.contains { $0.description.contains("security.istio.io/v1beta1") })
    }
}
