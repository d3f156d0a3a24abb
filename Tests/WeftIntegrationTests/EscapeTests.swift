import Foundation
import XCTest

/// No bypass, least privilege: a meshed app tries the usual ways around its proxy, and the
/// agent's own privileges are checked.
final class EscapeTests: MeshTestCase {
    var outside: MeshHarness.Background?

    override func tearDown() {
        if let outside, outside.process.isRunning { outside.process.terminate() }
        super.tearDown()
    }

    /// Run as the wrapped app: one line per attempt, `NAME ok|refused DETAIL`.
    static let escapes = #"""
    import errno, socket, subprocess, sys
    port, outside4, outside6, pod = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    def attempt(name, f):
        try:
            detail = f(); print(name, "ok", detail)
        except OSError as e:
            print(name, "refused", errno.errorcode.get(e.errno, e.errno))
        except Exception as e:
            print(name, "refused", type(e).__name__)
        sys.stdout.flush()
    def so_mark():
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, 36, 0x539)  # SO_MARK: the proxy's mark
    def raw():
        socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
    def bind(fam, kind, host, p):
        s = socket.socket(fam, kind)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind((host, p))
        if kind == socket.SOCK_STREAM: s.listen()
    def tcp(fam, host):
        c = socket.socket(fam); c.settimeout(3); c.connect((host, port)); d = c.recv(64)
        if not d.startswith(b"tcp-ok"): raise OSError(errno.ECONNRESET, "no answer")
        return d.decode().strip()
    def udp(fam, host):
        s = socket.socket(fam, socket.SOCK_DGRAM); s.settimeout(1.5); s.sendto(b"hi", (host, port)); d, _ = s.recvfrom(64)
        return d.decode()
    def run(argv):
        r = subprocess.run(argv, capture_output=True, timeout=10)
        if r.returncode != 0: raise OSError(errno.EPERM, r.stderr.decode()[:80])
    attempt("so_mark", so_mark)
    attempt("raw_socket", raw)
    attempt("bind_outbound_15001", lambda: bind(socket.AF_INET, socket.SOCK_STREAM, "127.0.0.1", 15001))
    attempt("bind_inbound_15006", lambda: bind(socket.AF_INET6, socket.SOCK_STREAM, "::", 15006))
    attempt("bind_dns_15053", lambda: bind(socket.AF_INET, socket.SOCK_DGRAM, "127.0.0.1", 15053))
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); probe.connect((outside4, 9)); own = probe.getsockname()[0]
    attempt("bind_inbound_own_ip_15006", lambda: bind(socket.AF_INET, socket.SOCK_STREAM, own, 15006))
    attempt("bind_dns_any_15053", lambda: bind(socket.AF_INET, socket.SOCK_DGRAM, "0.0.0.0", 15053))
    attempt("iptables_flush", lambda: run(["iptables", "-t", "nat", "-F"]))
    attempt("ping_outside", lambda: run(["ping", "-c", "1", "-W", "1", outside4]))
    attempt("tcp_outside_v4", lambda: tcp(socket.AF_INET, outside4))
    attempt("tcp_outside_v6", lambda: tcp(socket.AF_INET6, outside6))
    attempt("udp_outside_v4", lambda: udp(socket.AF_INET, outside4))
    attempt("udp_outside_v6", lambda: udp(socket.AF_INET6, outside6))
    attempt("tcp_direct_pod_ip", lambda: tcp(socket.AF_INET, pod))
    st = dict(l.split(":\t", 1) for l in open("/proc/self/status").read().splitlines() if ":\t" in l)
    print("caps", st["CapEff"].strip(), st["CapPrm"].strip(), st["CapBnd"].strip(), st["CapAmb"].strip(), "nnp", st["NoNewPrivs"].strip())
    """#

    static let echo = EgressTests.echo

    func testAMeshedAppCannotGetAroundItsProxy() throws {
        let gateway4 = mesh.podCIDR.split(separator: "/")[0].split(separator: ".").prefix(3).joined(separator: ".") + ".1"
        let addr6 = mesh.run(["ip", "-6", "-o", "addr", "show", "dev", mesh.bridge, "scope", "global"]).stdout
        let gateway6 = try XCTUnwrap(addr6.split(separator: " ").first { $0.contains(":") && $0.contains("/") }?.split(separator: "/").first.map(String.init),
                                     "the pod bridge has an IPv6 address: \(addr6)")
        let port = MeshHarness.freePort()
        try Self.escapes.write(toFile: mesh.dir + "/escapes.py", atomically: true, encoding: .utf8)
        try Self.echo.write(toFile: mesh.dir + "/echo.py", atomically: true, encoding: .utf8)
        try (Self.echo.replacingOccurrences(of: "socket.AF_INET,", with: "socket.AF_INET6,")
             .replacingOccurrences(of: "t = socket.socket()", with: "t = socket.socket(socket.AF_INET6)"))
            .write(toFile: mesh.dir + "/echo6.py", atomically: true, encoding: .utf8)
        outside = try mesh.startProcess(["/usr/bin/python3", mesh.dir + "/echo.py", gateway4, "\(port)"])
        let outside6 = try mesh.startProcess(["/usr/bin/python3", mesh.dir + "/echo6.py", gateway6, "\(port)"])
        defer { outside6.process.terminate() }
        _ = try mesh.startWeft(["run", "--name", mesh.name("echo"), "--service", "echo", "--port", "\(port)/tcp", "--",
                                "/usr/bin/python3", mesh.dir + "/echo.py", "0.0.0.0", "\(port)"])
        try mesh.waitForListener(netns: mesh.name("echo"), port: port)
        let pod = try XCTUnwrap(try mesh.workload(mesh.name("echo"))?.spec.podIP).description

        let config = mesh.dir + "/mesh.yaml"
        try """
        apiVersion: weft.dev/v1alpha1
        kind: MeshConfig
        metadata: {name: mesh}
        spec: {outboundTrafficPolicy: {mode: REGISTRY_ONLY}}
        """.write(toFile: config, atomically: true, encoding: .utf8)
        XCTAssertEqual(mesh.weft(["apply", "-f", config]).status, 0)

        let app = mesh.name("app")
        let r = mesh.weft(["run", "--name", app, "--service", "app", "--", "/usr/bin/python3", mesh.dir + "/escapes.py",
                           "\(port)", gateway4, gateway6, pod], timeout: 90)
        XCTAssertEqual(r.status, 0, r.output)
        var got: [String: (String, String)] = [:]
        for line in r.stdout.split(separator: "\n") {
            let f = line.split(separator: " ", maxSplits: 2).map(String.init)
            if f.count == 3 { got[f[0]] = (f[1], f[2]) }
        }
        let refused = ["so_mark": "EPERM", "raw_socket": "EPERM", "bind_outbound_15001": "EADDRINUSE", "bind_inbound_15006": "EADDRINUSE",
                       "bind_dns_15053": "EADDRINUSE", "bind_inbound_own_ip_15006": "EADDRINUSE", "bind_dns_any_15053": "EADDRINUSE"]
        for (name, code) in refused {
            XCTAssertEqual(got[name]?.0, "refused", "\(name): \(String(describing: got[name]))")
            XCTAssertEqual(got[name]?.1, code, name)
        }
        for name in ["iptables_flush", "ping_outside", "tcp_outside_v4", "tcp_outside_v6", "udp_outside_v4", "udp_outside_v6"] {
            XCTAssertEqual(got[name]?.0, "refused", "\(name) must not get out: \(String(describing: got[name]))")
        }
        XCTAssertEqual(got["tcp_direct_pod_ip"]?.0, "ok", "a mesh workload by pod IP is reachable (through the proxy): \(String(describing: got["tcp_direct_pod_ip"]))")
        // The wrapped app: no capabilities at all, none it could regain, no_new_privs.
        XCTAssertEqual(got["caps"]?.0, "0000000000000000")
        XCTAssertEqual(got["caps"]?.1, "0000000000000000 0000000000000000 0000000000000000 nnp 1")
        // The direct pod-IP connection went through the app's proxy, and was not refused there.
        let log = mesh.agentLog
        XCTAssertTrue(log.contains("egress tcp \(gateway4):\(port) denied") && log.contains("egress tcp [\(gateway6)]:\(port) denied"), "both TCP families refused by the proxy")
        XCTAssertTrue(log.contains("egress udp [\(gateway6)]:\(port) denied"), "UDP over IPv6 queued and refused")
    }

    /// The agent keeps CAP_NET_ADMIN and CAP_SYS_ADMIN only (bounding set too); without one of
    /// them it refuses to start and says which and why; the local API refuses non-root callers.
    func testTheAgentRunsWithOnlyWhatItNeedsAndItsAPIOnlyForRoot() throws {
        let pid = try XCTUnwrap(mesh.agent?.processIdentifier)
        let status = try String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)
        func field(_ name: String) -> String? {
            status.split(separator: "\n").first { $0.hasPrefix(name + ":") }.map { $0.split(separator: "\t").last.map(String.init) ?? "" }
        }
        // Bits 12 (CAP_NET_ADMIN) and 21 (CAP_SYS_ADMIN).
        for set in ["CapEff", "CapPrm", "CapBnd"] { XCTAssertEqual(field(set), "0000000000201000", set) }
        XCTAssertEqual(field("CapInh"), "0000000000000000")
        XCTAssertEqual(field("CapAmb"), "0000000000000000")
        // Every thread, not just the first.
        let tasks = try FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")
        XCTAssertGreaterThan(tasks.count, 1)
        for t in tasks {
            let s = (try? String(contentsOfFile: "/proc/\(pid)/task/\(t)/status", encoding: .utf8)) ?? ""
            XCTAssertTrue(s.contains("CapEff:\t0000000000201000"), "thread \(t)")
        }

        let setpriv = try XCTUnwrap(HostTool.find("setpriv"))
        let lacking = mesh.run([setpriv, "--bounding-set", "-sys_admin", MeshHarness.weftBinary, "agent", "--socket", mesh.dir + "/other.sock",
                                "--bridge", "wx" + mesh.id, "--state-dir", mesh.dir + "/other-state"], timeout: 20)
        XCTAssertNotEqual(lacking.status, 0)
        XCTAssertTrue(lacking.output.contains("lacks CAP_SYS_ADMIN (setns()"), lacking.output)

        let nobody = mesh.run([setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", MeshHarness.weftBinary, "get", "workloads",
                               "--agent-socket", mesh.socket], timeout: 20)
        XCTAssertNotEqual(nobody.status, 0)
        XCTAssertTrue(nobody.output.contains("root") || nobody.output.contains("ermission"), nobody.output)
    }
}
