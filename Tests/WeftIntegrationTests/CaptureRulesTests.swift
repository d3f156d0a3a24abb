import Foundation
import WeftCore
import XCTest

/// `weft init`, `weft attach` and `weft detach` against namespaces the test made itself.
final class CaptureRulesTests: XCTestCase {
    var mesh: MeshHarness!

    override func setUpWithError() throws { mesh = try MeshHarness.start() }
    override func tearDown() { mesh?.shutdown() }

    func save(_ ns: String, _ tool: String = "iptables-save") -> String {
        mesh.run(["ip", "netns", "exec", ns, tool, "-t", "nat"]).stdout
            .split(separator: "\n").filter { !$0.hasPrefix("#") }.joined(separator: "\n")
    }

    func testInitIsIdempotentCoversIPv6AndRemovesExactlyItsOwn() throws {
        let ns = try mesh.makeNetns("rules")
        // A rule of the user's own, which Weft must leave alone.
        XCTAssertEqual(mesh.run(["ip", "netns", "exec", ns, "iptables", "-t", "nat", "-A", "OUTPUT", "-p", "udp",
                                 "--dport", "9999", "-j", "RETURN"]).status, 0)
        let before = save(ns)

        let first = mesh.weft(["init", "--netns", ns, "--exclude-outbound-cidrs", "192.0.2.0/24,2001:db8::/32",
                               "--exclude-inbound-ports", "22"])
        XCTAssertEqual(first.status, 0, first.output)
        let once = save(ns), once6 = save(ns, "ip6tables-save")
        XCTAssertEqual(mesh.weft(["init", "--netns", ns, "--exclude-outbound-cidrs", "192.0.2.0/24,2001:db8::/32",
                                  "--exclude-inbound-ports", "22"]).status, 0)
        XCTAssertEqual(save(ns), once, "running init twice must change nothing")
        XCTAssertEqual(save(ns, "ip6tables-save"), once6)

        for (dump, family) in [(once, "v4"), (once6, "v6")] {
            XCTAssertEqual(dump.components(separatedBy: "-j WEFT_OUTPUT").count - 1, 2, "\(family): one TCP and one DNS jump")
            XCTAssertTrue(dump.contains("-A OUTPUT -p udp -m udp --dport 53 -m comment --comment \"weft: DNS capture\" -j WEFT_OUTPUT"), dump)
            XCTAssertEqual(dump.components(separatedBy: "-j WEFT_INBOUND").count - 1, 1, "\(family): one PREROUTING jump")
            XCTAssertTrue(dump.contains("--to-ports 15001") && dump.contains("--to-ports 15006"), "\(family): \(dump)")
            for rule in dump.split(separator: "\n") where rule.hasPrefix("-A WEFT_") || rule.contains("-j WEFT_") {
                XCTAssertTrue(rule.contains("--comment \"weft: "), "uncommented rule: \(rule)")
            }
        }
        XCTAssertTrue(once.contains("-d 192.0.2.0/24"))
        XCTAssertFalse(once.contains("2001:db8"))
        XCTAssertTrue(once6.contains("-d 2001:db8::/32"))
        XCTAssertTrue(once.contains("--dports 22"))

        // The dry run prints what was applied (minus what iptables-save normalises).
        let dry = mesh.weft(["init", "--netns", ns, "--dry-run"])
        XCTAssertEqual(dry.status, 0)
        XCTAssertTrue(dry.stdout.contains("-A WEFT_OUTPUT -p tcp -m comment --comment \"weft: outbound TCP to the workload proxy\" -j REDIRECT --to-ports 15001"))

        let removed = mesh.weft(["init", "--netns", ns, "--remove"])
        XCTAssertEqual(removed.status, 0, removed.output)
        XCTAssertEqual(save(ns), before, "remove must restore the table exactly, user rule included")
        XCTAssertFalse(save(ns, "ip6tables-save").contains("WEFT"))
        let again = mesh.weft(["init", "--netns", ns, "--remove"])
        XCTAssertEqual(again.status, 0)
        XCTAssertTrue(again.stdout.contains("had no Weft capture rules"))
    }

    func testDryRunNeedsNoRootAndBadFlagsAreNamed() throws {
        let dry = mesh.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", MeshHarness.weftBinary,
                            "init", "--netns", "anything", "--dry-run", "--proxy-uid", "1337"])
        XCTAssertEqual(dry.status, 0, dry.output)
        XCTAssertTrue(dry.stdout.contains("--uid-owner 1337"))
        let applyAsUser = mesh.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", MeshHarness.weftBinary,
                                    "init", "--netns", "anything"])
        XCTAssertEqual(applyAsUser.status, 1)
        XCTAssertTrue(applyAsUser.stderr.contains("needs root"))
        let bad = mesh.weft(["init", "--netns", "x", "--dry-run", "--exclude-outbound-cidrs", "10.0.0.0/99"])
        XCTAssertTrue(bad.stderr.contains("--exclude-outbound-cidrs: '10.0.0.0/99'"), bad.stderr)
        let both = mesh.weft(["init", "--netns", "x", "--dry-run", "--proxy-mark", "7", "--proxy-uid", "1"])
        XCTAssertTrue(both.stderr.contains("pick one"), both.stderr)
    }

    func testAttachAndDetachAnExistingNamespace() throws {
        let ns = try mesh.makeNetns("existing")
        let attach = mesh.weft(["attach", "--netns", ns, "--service", "legacy", "--port", "80:8080/http", "--label", "tier=old"])
        XCTAssertEqual(attach.status, 0, attach.output)
        XCTAssertTrue(save(ns).contains("-j WEFT_OUTPUT"))
        let listeners = mesh.run(["ip", "netns", "exec", ns, "ss", "-Hltn"]).stdout
        for expected in ["127.0.0.1:15001", "0.0.0.0:15006", "[::1]:15001", "[::]:15006"] {
            XCTAssertTrue(listeners.contains(expected), "proxy listener \(expected) not inside the netns:\n\(listeners)")
        }
        let w = try XCTUnwrap(try mesh.workload(ns))
        XCTAssertEqual(w.spec.service.rawValue, "legacy")
        XCTAssertEqual(w.spec.ports.map(\.description), ["80:8080/http"])

        let twice = mesh.weft(["attach", "--netns", ns, "--service", "legacy"])
        XCTAssertEqual(twice.status, 1)
        XCTAssertTrue(twice.stderr.contains("already meshed"), twice.stderr)

        let detach = mesh.weft(["detach", "--netns", ns])
        XCTAssertEqual(detach.status, 0, detach.output)
        XCTAssertFalse(save(ns).contains("WEFT"))
        XCTAssertNil(try mesh.workload(ns))
        XCTAssertTrue(mesh.netnsList().contains(ns), "detach must keep the namespace")
        XCTAssertEqual(mesh.run(["ip", "netns", "exec", ns, "ss", "-Hltn"]).stdout.contains("15001"), false)
    }

    func testAttachFailsCleanlyWhenACapturePortIsTaken() throws {
        let ns = try mesh.makeNetns("busy")
        let squatter = Process()
        squatter.executableURL = URL(fileURLWithPath: "/usr/sbin/ip")
        squatter.arguments = ["netns", "exec", ns, "/usr/bin/python3", "-c",
                              "import socket,time; s=socket.socket(); s.bind(('127.0.0.1',15001)); s.listen(); time.sleep(60)"]
        try squatter.run()
        defer { squatter.terminate(); squatter.waitUntilExit() }
        try mesh.waitForListener(netns: ns, port: 15001)
        let r = mesh.weft(["attach", "--netns", ns, "--service", "busy"])
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(r.stderr.contains("port 15001") && r.stderr.contains("already in use inside netns \(ns)"), r.stderr)
        XCTAssertFalse(save(ns).contains("WEFT"), "no rules may be left after a failed attach")
        XCTAssertNil(try mesh.workload(ns))
    }
}
