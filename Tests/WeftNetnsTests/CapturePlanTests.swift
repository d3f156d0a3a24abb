import WeftCore
import XCTest
@testable import WeftNetns

final class CapturePlanTests: XCTestCase {
    /// Golden: the default IPv4 plan, rule for rule. A change here changes what runs in
    /// every meshed netns, so it must be deliberate.
    func testDefaultIPv4PlanGolden() {
        let script = CapturePlan(family: .v4, options: CaptureOptions()).applyScript(current: IptablesSave())
        XCTAssertEqual(script, """
            *nat
            :WEFT_INBOUND - [0:0]
            :WEFT_OUTPUT - [0:0]
            -A WEFT_INBOUND -p tcp --dport 15008 -m comment --comment "weft: mesh tunnel port is never captured" -j RETURN
            -A WEFT_INBOUND -p tcp -m comment --comment "weft: inbound TCP to the workload proxy" -j REDIRECT --to-ports 15006
            -A WEFT_OUTPUT -m mark --mark 0x539 -m comment --comment "weft: proxy's own sockets (SO_MARK)" -j RETURN
            -A WEFT_OUTPUT -p udp --dport 53 -m comment --comment "weft: DNS to the workload's DNS proxy" -j REDIRECT --to-ports 15053
            -A WEFT_OUTPUT -p tcp --dport 53 -m comment --comment "weft: DNS to the workload's DNS proxy" -j REDIRECT --to-ports 15053
            -A WEFT_OUTPUT ! -p tcp -m comment --comment "weft: other non-TCP traffic is not proxied" -j RETURN
            -A WEFT_OUTPUT -o lo -m comment --comment "weft: loopback app-to-app traffic" -j RETURN
            -A WEFT_OUTPUT -p tcp --dport 15008 -m comment --comment "weft: mesh tunnel port is never captured" -j RETURN
            -A WEFT_OUTPUT -p tcp -m comment --comment "weft: outbound TCP to the workload proxy" -j REDIRECT --to-ports 15001
            -A PREROUTING -p tcp -m comment --comment "weft: inbound capture" -j WEFT_INBOUND
            -A OUTPUT -p tcp -m comment --comment "weft: outbound capture" -j WEFT_OUTPUT
            -A OUTPUT -p udp --dport 53 -m comment --comment "weft: DNS capture" -j WEFT_OUTPUT
            COMMIT
            *filter
            :WEFT_EGRESS - [0:0]
            -A WEFT_EGRESS -o lo -m comment --comment "weft: loopback" -j RETURN
            -A WEFT_EGRESS -m conntrack --ctstate DNAT -m comment --comment "weft: redirected to the proxy (captured DNS)" -j RETURN
            -A WEFT_EGRESS -p tcp -m comment --comment "weft: TCP is the proxy's (nat capture)" -j RETURN
            -A WEFT_EGRESS -m mark --mark 0x539 -m comment --comment "weft: proxy's own sockets (SO_MARK)" -j RETURN
            -A WEFT_EGRESS -m conntrack --ctstate NEW -m comment --comment "weft: new non-TCP flows: the agent decides" -j NFQUEUE --queue-num 15009
            -A OUTPUT -m comment --comment "weft: egress control" -j WEFT_EGRESS
            COMMIT

            """)
    }

    /// IPv6: neighbour discovery and MLD are never queued (the kernel's own housekeeping),
    /// there is no `--queue-bypass` anywhere (fail closed), and without a queue the filter
    /// table is left alone unless our chain is there to remove.
    func testEgressQueueRules() {
        let v6 = CapturePlan(family: .v6, options: CaptureOptions()).egressRules.map(\.description)
        for type in ["133", "134", "135", "136", "137", "143"] {
            XCTAssertTrue(v6.contains { $0.contains("--icmpv6-type \(type) ") && $0.hasSuffix("-j RETURN") }, "ICMPv6 type \(type)")
        }
        XCTAssertTrue(v6.last!.contains("NFQUEUE --queue-num 15009"))
        XCTAssertFalse(v6.joined().contains("bypass"))
        var off = CaptureOptions()
        off.egressQueue = nil
        XCTAssertFalse(CapturePlan(family: .v4, options: off).applyScript(current: IptablesSave()).contains("*filter"))
        // Turning it off on a netns that had it: chain flushed, jump deleted.
        let had = IptablesSave(parsing: """
            *filter
            :OUTPUT ACCEPT [0:0]
            :WEFT_EGRESS - [0:0]
            -A OUTPUT -m comment --comment "weft: egress control" -j WEFT_EGRESS
            COMMIT
            """)
        let script = CapturePlan(family: .v4, options: off).applyScript(current: had)
        XCTAssertTrue(script.contains(":WEFT_EGRESS - [0:0]") && script.contains(#"-D OUTPUT -m comment --comment "weft: egress control" -j WEFT_EGRESS"#), script)
        let removal = CapturePlan.removeScript(current: had) ?? ""
        XCTAssertTrue(removal.contains("*filter") && removal.contains("-X WEFT_EGRESS"), removal)
    }

    func testExclusionsAndIncludesGolden() {
        var o = CaptureOptions()
        o.outboundPort = 16001
        o.inboundPort = 16006
        o.exclusion = .owner(uid: 1337, gid: 1338)
        o.dnsPort = nil
        o.excludeInboundPorts = [22, 9090, 22]
        o.excludeOutboundPorts = [5432]
        o.excludeOutboundCIDRs = [CIDR("10.0.0.0/8")!, CIDR("fd00::/8")!]
        o.includeOutboundCIDRs = [CIDR("240.240.0.0/16")!, CIDR("fd10::/16")!]
        let v4 = CapturePlan(family: .v4, options: o).chainRules.map(\.description)
        XCTAssertEqual(v4, [
            #"WEFT_INBOUND -p tcp --dport 15008 -m comment --comment "weft: mesh tunnel port is never captured" -j RETURN"#,
            #"WEFT_INBOUND -p tcp -m multiport --dports 22,9090 -m comment --comment "weft: excluded inbound ports" -j RETURN"#,
            #"WEFT_INBOUND -p tcp -m comment --comment "weft: inbound TCP to the workload proxy" -j REDIRECT --to-ports 16006"#,
            #"WEFT_OUTPUT -m owner --uid-owner 1337 -m comment --comment "weft: proxy's own sockets (uid)" -j RETURN"#,
            #"WEFT_OUTPUT -m owner --gid-owner 1338 -m comment --comment "weft: proxy's own sockets (gid)" -j RETURN"#,
            #"WEFT_OUTPUT -o lo -m comment --comment "weft: loopback app-to-app traffic" -j RETURN"#,
            #"WEFT_OUTPUT -p tcp --dport 15008 -m comment --comment "weft: mesh tunnel port is never captured" -j RETURN"#,
            #"WEFT_OUTPUT -p tcp -m multiport --dports 5432 -m comment --comment "weft: excluded outbound ports" -j RETURN"#,
            #"WEFT_OUTPUT -d 10.0.0.0/8 -m comment --comment "weft: excluded outbound CIDR" -j RETURN"#,
            #"WEFT_OUTPUT -p tcp -d 240.240.0.0/16 -m comment --comment "weft: included outbound CIDR to the workload proxy" -j REDIRECT --to-ports 16001"#,
        ])
        let v6 = CapturePlan(family: .v6, options: o).chainRules.map(\.description)
        XCTAssertTrue(v6.contains(#"WEFT_OUTPUT -d fd00::/8 -m comment --comment "weft: excluded outbound CIDR" -j RETURN"#))
        XCTAssertTrue(v6.contains(#"WEFT_OUTPUT -p tcp -d fd10::/16 -m comment --comment "weft: included outbound CIDR to the workload proxy" -j REDIRECT --to-ports 16001"#))
        XCTAssertFalse(v6.joined().contains("10.0.0.0/8"), "IPv4 CIDRs must not reach ip6tables")
    }

    func testEveryRuleIsCommentedAndExemptionsPrecedeRedirects() {
        for family in IPFamily.allCases {
            let plan = CapturePlan(family: family, options: CaptureOptions())
            for rule in plan.chainRules + plan.jumpRules {
                XCTAssertTrue(rule.description.contains(#"--comment "weft: "#), "\(rule)")
            }
            // Every exemption precedes the redirect to the proxy port; only the DNS redirect
            // comes earlier, on purpose (resolvers such as 127.0.0.53 sit on loopback).
            for (chain, port) in [(CapturePlan.inboundChain, "15006"), (CapturePlan.outboundChain, "15001")] {
                let rules = plan.chainRules.filter { $0.chain == chain }
                let proxyRedirect = rules.firstIndex { $0.target == ["-j", "REDIRECT", "--to-ports", port] }!
                XCTAssertFalse(rules[proxyRedirect...].contains { $0.target == ["-j", "RETURN"] }, "RETURN after the proxy REDIRECT in \(chain)")
                let dns = rules.firstIndex { $0.target.last == "15053" }
                if chain == CapturePlan.outboundChain {
                    XCTAssertLessThan(dns!, rules.firstIndex { $0.match == ["-o", "lo"] }!, "DNS is redirected before the loopback exemption")
                    XCTAssertGreaterThan(dns!, 0, "the proxy's own DNS queries (marked) are exempt first")
                }
            }
        }
    }

    /// Re-applying on a netns that already has our jumps must not add them again.
    func testApplyIsIdempotentAgainstExistingJumps() {
        let dump = """
            # Generated by iptables-save v1.8.9 (nf_tables)
            *filter
            :INPUT ACCEPT [0:0]
            -A INPUT -j WEFT_OUTPUT
            COMMIT
            *nat
            :PREROUTING ACCEPT [0:0]
            :OUTPUT ACCEPT [0:0]
            :WEFT_INBOUND - [0:0]
            :WEFT_OUTPUT - [0:0]
            -A PREROUTING -p tcp -m comment --comment "weft: inbound capture" -j WEFT_INBOUND
            -A OUTPUT -p tcp -m comment --comment "weft: outbound capture" -j WEFT_OUTPUT
            -A WEFT_OUTPUT -p tcp -j REDIRECT --to-ports 15001
            COMMIT
            """
        let save = IptablesSave(parsing: dump)
        XCTAssertTrue(save.isCaptured)
        let script = CapturePlan(family: .v4, options: CaptureOptions()).applyScript(current: save)
        XCTAssertFalse(script.contains("-A PREROUTING"))
        XCTAssertFalse(script.contains("-A OUTPUT -p tcp"))
        XCTAssertTrue(script.contains("-A OUTPUT -p udp --dport 53"), "the DNS jump was missing and is added")
        XCTAssertTrue(script.contains(":WEFT_OUTPUT - [0:0]"), "declaring the chain flushes it, so rules are replaced")
    }

    func testRemoveDeletesExactlyOursIncludingDuplicates() {
        let dump = """
            *nat
            :PREROUTING ACCEPT [0:0]
            :OUTPUT ACCEPT [0:0]
            :WEFT_INBOUND - [0:0]
            :WEFT_OUTPUT - [0:0]
            :USER_CHAIN - [0:0]
            -A PREROUTING -p tcp -m comment --comment "weft: inbound capture" -j WEFT_INBOUND
            -A OUTPUT -p tcp -m comment --comment "weft: outbound capture" -j WEFT_OUTPUT
            -A OUTPUT -p tcp -m comment --comment "weft: outbound capture" -j WEFT_OUTPUT
            -A OUTPUT -p udp -j USER_CHAIN
            -A WEFT_OUTPUT -p tcp -j REDIRECT --to-ports 15001
            COMMIT
            """
        let script = CapturePlan.removeScript(current: IptablesSave(parsing: dump))
        XCTAssertEqual(script, """
            *nat
            -D PREROUTING -p tcp -m comment --comment "weft: inbound capture" -j WEFT_INBOUND
            -D OUTPUT -p tcp -m comment --comment "weft: outbound capture" -j WEFT_OUTPUT
            -D OUTPUT -p tcp -m comment --comment "weft: outbound capture" -j WEFT_OUTPUT
            -F WEFT_INBOUND
            -X WEFT_INBOUND
            -F WEFT_OUTPUT
            -X WEFT_OUTPUT
            COMMIT

            """)
    }

    func testRemoveOnCleanTableIsNothing() {
        let dump = "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -p udp -j RETURN\nCOMMIT\n"
        XCTAssertNil(CapturePlan.removeScript(current: IptablesSave(parsing: dump)))
        XCTAssertFalse(IptablesSave(parsing: dump).isCaptured)
    }
}
