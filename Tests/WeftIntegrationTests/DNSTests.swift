import Foundation
import WeftCore
import XCTest

/// The per-workload DNS proxy through real namespaces, with unmodified resolvers (glibc's
/// getent, curl): mesh names answered from the registry, everything else forwarded to the
/// agent's upstream (a stub here), over UDP and TCP.
final class DNSTests: XCTestCase {
    var mesh: MeshHarness!
    var web: ServiceStatus!

    override func setUpWithError() throws {
        mesh = try MeshHarness.start()
        let root = mesh.dir + "/www"
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o755])
        FileManager.default.createFile(atPath: root + "/id.txt", contents: Data("found by name\n".utf8), attributes: [.posixPermissions: 0o644])
        _ = try mesh.startWeft(["run", "--name", mesh.name("web"), "--service", "web", "--namespace", "shop", "--port", "80:3000",
                                "--", "/usr/bin/python3", "-m", "http.server", "3000", "--directory", root])
        try mesh.waitForListener(netns: mesh.name("web"), port: 3000)
        let r = mesh.weft(["get", "services", "-o", "json"])
        web = try XCTUnwrap(try JSONDecoder().decode([ServiceStatus].self, from: Data(r.stdout.utf8)).first)
    }

    override func tearDown() {
        mesh?.shutdown()
        if let mesh { XCTAssertEqual(mesh.ourNetns(), [], "teardown must leave no netns") }
    }

    /// Runs a shell snippet in a fresh meshed client of namespace `ns`.
    func client(_ script: String, ns: String = "default") -> MeshHarness.Result {
        mesh.weft(["run", "--name", mesh.name("cli"), "--service", "client", "--namespace", ns, "--", "sh", "-c", script], timeout: 60)
    }

    func testMeshNamesResolveWithIstioShortNameSemantics() throws {
        let vip = "\(web.vip)", vip6 = "\(try XCTUnwrap(web.vip6))"
        let fromShop = client("getent ahostsv4 web; getent ahostsv4 web.shop; getent ahostsv4 web.shop.svc; getent ahostsv4 web.shop.svc.cluster.local; getent ahostsv6 web.shop", ns: "shop")
        XCTAssertEqual(fromShop.status, 0, fromShop.output)
        for name in ["web", "web.shop", "web.shop.svc", "web.shop.svc.cluster.local"] {
            XCTAssertTrue(fromShop.stdout.contains("\(vip)           STREAM \(name)\n") || fromShop.stdout.contains("\(vip)       STREAM \(name)")
                          || fromShop.stdout.split(separator: "\n").contains { $0.hasPrefix(vip) && $0.hasSuffix(" \(name)") },
                          "\(name) → \(vip) expected in:\n\(fromShop.stdout)")
        }
        XCTAssertTrue(fromShop.stdout.contains(vip6), "AAAA answers the IPv6 VIP:\n\(fromShop.stdout)")

        // From namespace default, the short name means web.default, which does not exist.
        let fromDefault = client("getent ahostsv4 web.shop && ! getent ahostsv4 web", ns: "default")
        XCTAssertEqual(fromDefault.status, 0, fromDefault.output)
        // Mesh names never went upstream.
        XCTAssertFalse(mesh.dnsStubLog.contains("web.shop"), mesh.dnsStubLog)
    }

    func testUnmodifiedCurlReachesAServiceByName() throws {
        let r = client("curl -sS -m 5 http://web.shop/id.txt && curl -sS -m 5 http://web.shop.svc.cluster.local:80/id.txt")
        XCTAssertEqual(r.status, 0, r.output)
        XCTAssertEqual(r.stdout, "found by name\nfound by name\n")
    }

    func testOtherNamesAreForwardedAndClusterNamesAreAnsweredHere() throws {
        let r = client("getent ahostsv4 ext.test; echo rc=$?; getent ahostsv4 nope.shop.svc.cluster.local; echo rc=$?; getent ahostsv4 unknown.example; echo rc=$?")
        XCTAssertTrue(r.stdout.contains("192.0.2.10"), "ext.test comes from the upstream stub:\n\(r.output)")
        XCTAssertTrue(r.stdout.contains("rc=0\n") && r.stdout.components(separatedBy: "rc=2").count == 3, r.stdout)
        XCTAssertTrue(mesh.dnsStubLog.contains("ext.test 1"), mesh.dnsStubLog)
        XCTAssertTrue(mesh.dnsStubLog.contains("unknown.example"), mesh.dnsStubLog)
        XCTAssertFalse(mesh.dnsStubLog.contains("nope.shop"), "the mesh zone is answered locally:\n\(mesh.dnsStubLog)")
    }

    func testTCPQueriesAndMalformedInputAreHandled() throws {
        // An unmodified resolver path cannot be forced to TCP, so speak it directly: to the
        // netns's configured nameserver on port 53, which the capture rules redirect.
        let script = """
            import socket, struct, sys
            ns = [l.split()[1] for l in open("/etc/resolv.conf") if l.startswith("nameserver")][0]
            def q(name, qtype=1, tid=0x1234):
                body = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\\0" + struct.pack(">HH", qtype, 1)
                return struct.pack(">HHHHHH", tid, 0x0100, 1, 0, 0, 0) + body
            def tcp(msg):
                s = socket.create_connection((ns, 53), timeout=5); s.sendall(struct.pack(">H", len(msg)) + msg)
                n = struct.unpack(">H", s.recv(2))[0]; data = b""
                while len(data) < n: data += s.recv(n - len(data))
                return data
            a = tcp(q("web.shop"))
            print("tcp-mesh", a[:2].hex(), a[3] & 15, socket.inet_ntoa(a[-4:]))
            e = tcp(q("ext.test"))
            print("tcp-upstream", e[3] & 15, socket.inet_ntoa(e[-4:]))
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(5); u.connect((ns, 53))
            u.send(b"\\x00\\x01garbage-that-is-not-dns"); r = u.recv(512)
            print("garbage", r[3] & 15)
            u.send(q("web.shop", tid=0x4242)); r = u.recv(512)
            print("after", r[:2].hex(), socket.inet_ntoa(r[-4:]))
            """
        try script.write(toFile: mesh.dir + "/dnsq.py", atomically: true, encoding: .utf8)
        chmod(mesh.dir + "/dnsq.py", 0o644)
        let r = client("/usr/bin/python3 \(mesh.dir)/dnsq.py")
        XCTAssertEqual(r.status, 0, r.output)
        XCTAssertTrue(r.stdout.contains("tcp-mesh 1234 0 \(web.vip)"), r.stdout)
        XCTAssertTrue(r.stdout.contains("tcp-upstream 0 192.0.2.10"), "TCP forwarded upstream over TCP:\n\(r.stdout)")
        XCTAssertTrue(r.stdout.contains("garbage 1"), "FORMERR for an unreadable query:\n\(r.stdout)")
        XCTAssertTrue(r.stdout.contains("after 4242 \(web.vip)"), "the proxy keeps serving after bad input:\n\(r.stdout)")
    }
}
