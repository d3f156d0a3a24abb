@testable import WeftConfig
import CWeftLinux
import WeftCore
import XCTest
@testable import WeftProxy

/// The egress verdict, rule by rule (MeshConfig outboundTrafficPolicy).
final class EgressDecisionTests: XCTestCase {
    let meta = ObjectMeta(name: "mesh", namespace: "weft-system")
    let loc = SourceLocation(file: "t.yaml", line: 1, column: 1)

    func policy(_ mode: MeshConfigPolicy.OutboundMode, _ allowed: [MeshConfigPolicy.AllowedDestination] = []) -> MeshConfigPolicy {
        var p = MeshConfigPolicy(metadata: meta, location: loc)
        p.outboundMode = mode
        p.allowedDestinations = allowed
        return p
    }

    func flow(_ proto: EgressFlow.Proto, _ ip: String, _ port: UInt16?) -> EgressFlow {
        EgressFlow(proto: proto, destination: IPAddress(ip)!, port: port)
    }

    func testDefaultAndAllowAnyLetEverythingOut() {
        XCTAssertTrue(EgressDecision.decide(flow(.udp, "192.0.2.1", 53), policy: nil, inRegistry: false).allowed)
        XCTAssertTrue(EgressDecision.decide(flow(.icmp, "2001:db8::1", nil), policy: policy(.ALLOW_ANY), inRegistry: false).allowed)
    }

    func testRegistryOnlyAllowsTheMeshAndTheListOnly() {
        let p = policy(.REGISTRY_ONLY, [
            .init(cidr: CIDR("10.0.0.0/8")!, ports: [5432], proto: .TCP),
            .init(cidr: CIDR("192.0.2.53")!, proto: .UDP),
            .init(cidr: CIDR("2001:db8::/32")!, proto: .ICMP),
            .init(cidr: CIDR("198.51.100.0/24")!),
        ])
        let cases: [(EgressFlow, Bool, Bool, String)] = [
            (flow(.tcp, "203.0.113.9", 443), true, true, "a mesh destination"),
            (flow(.udp, "203.0.113.9", 9999), true, true, "a mesh workload over UDP"),
            (flow(.tcp, "203.0.113.9", 443), false, false, "outside the registry"),
            (flow(.tcp, "10.1.2.3", 5432), false, true, "allowed CIDR and port"),
            (flow(.tcp, "10.1.2.3", 5433), false, false, "allowed CIDR, other port"),
            (flow(.udp, "10.1.2.3", 5432), false, false, "allowed CIDR and port, other protocol"),
            (flow(.udp, "192.0.2.53", 53), false, true, "a single address, any port"),
            (flow(.udp, "192.0.2.54", 53), false, false, "the next address"),
            (flow(.icmp, "2001:db8::7", nil), false, true, "ICMPv6 to an allowed block"),
            (flow(.icmp, "192.0.2.53", nil), false, false, "ICMP where only UDP is allowed"),
            (flow(.other(132), "198.51.100.4", 9), false, true, "ANY covers other protocols"),
            (flow(.other(47), "203.0.113.1", nil), false, false, "GRE outside the list"),
        ]
        for (f, inRegistry, allowed, why) in cases {
            XCTAssertEqual(EgressDecision.decide(f, policy: p, inRegistry: inRegistry).allowed, allowed, why)
        }
        let denied = EgressDecision.decide(flow(.udp, "8.8.8.8", 53), policy: p, inRegistry: false)
        XCTAssertTrue(denied.reason.contains("8.8.8.8") && denied.reason.contains("REGISTRY_ONLY"), denied.reason)
    }

    func testQueuedPacketsBecomeFlows() {
        var p = weft_nfq_packet()
        p.family = 4
        p.protocol = 17
        p.dport = 53
        withUnsafeMutableBytes(of: &p.dst) { $0[0] = 192; $0[1] = 0; $0[2] = 2; $0[3] = 7 }
        XCTAssertEqual(EgressQueue.flow(of: p), flow(.udp, "192.0.2.7", 53))
        p.family = 6
        p.protocol = 58
        withUnsafeMutableBytes(of: &p.dst) { b in for i in 0..<16 { b[i] = 0 }; b[0] = 0x20; b[1] = 0x01; b[15] = 1 }
        XCTAssertEqual(EgressQueue.flow(of: p), flow(.icmp, "2001::1", nil))
        p.family = 0
        XCTAssertNil(EgressQueue.flow(of: p))
    }
}
