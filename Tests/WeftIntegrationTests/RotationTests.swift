import Foundation
import WeftCore
import XCTest

/// Certificates that live one minute (renewed 15 s after issue: half of the lifetime plus the
/// 30 s backdate): renewal happens while a long-lived connection keeps streaming through the
/// tunnel, the connection survives, and new connections use the new certificate.
final class RotationTests: XCTestCase {
    var mesh: MeshHarness!

    override func setUpWithError() throws { mesh = try MeshHarness.start(agentArgs: ["--cert-lifetime", "1m"]) }
    override func tearDown() {
        mesh?.shutdown()
        if let mesh { XCTAssertEqual(mesh.ourNetns(), [], "teardown must leave no netns") }
    }

    struct Certs: Decodable {
        struct Cert: Decodable { let workload: String; let serial: String; let issued: Int }
        let workloads: [Cert]
    }

    func certs() throws -> [String: Certs.Cert] {
        let r = mesh.weft(["get", "certs", "-o", "json"])
        let reply = try JSONDecoder().decode(Certs.self, from: Data(r.stdout.utf8))
        return Dictionary(uniqueKeysWithValues: reply.workloads.map { ($0.workload, $0) })
    }

    func testRenewalKeepsALongLivedConnectionStreaming() throws {
        _ = try mesh.startWeft(["run", "--name", mesh.name("echo"), "--service", "echo", "--port", "9000/tcp", "--",
                                "/usr/bin/python3", "-c", """
            import socket, threading
            def serve(c):
                while True:
                    d = c.recv(65536)
                    if not d: break
                    c.sendall(d)
                c.close()
            s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("0.0.0.0", 9000)); s.listen()
            while True:
                c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
            """])
        try mesh.waitForListener(netns: mesh.name("echo"), port: 9000)
        let first = try XCTUnwrap(try certs()[mesh.name("echo")])
        XCTAssertEqual(first.issued, 1)
        // One connection, a line every 250 ms for 24 s, each echoed back.
        let client = try mesh.startWeft(["run", "--name", mesh.name("cli"), "--service", "client", "--", "/usr/bin/python3", "-c", """
            import socket, time
            c = socket.create_connection(("echo", 9000), timeout=5)
            n = 0
            for i in range(96):
                line = b"line %d\\n" % i
                c.sendall(line)
                got = b""
                while len(got) < len(line):
                    chunk = c.recv(len(line) - len(got))
                    if not chunk: raise SystemExit("connection closed after %d lines" % n)
                    got += chunk
                assert got == line, got
                n += 1
                time.sleep(0.25)
            print("ok", n)
            """])
        try mesh.waitUntil("both certificates renewed", timeout: 40) {
            let now = try self.certs()
            return (now[self.mesh.name("echo")]?.issued ?? 0) >= 2 && (now[self.mesh.name("cli")]?.issued ?? 0) >= 2
        }
        let renewed = try XCTUnwrap(try certs()[mesh.name("echo")])
        XCTAssertNotEqual(renewed.serial, first.serial)
        XCTAssertEqual(mesh.wait(client, timeout: 40), 0, client.stderr)
        XCTAssertEqual(client.stdout, "ok 96\n", client.stderr)
        // A new caller after the renewal: a new tunnel connection with the new certificates.
        let fresh = mesh.weft(["run", "--name", mesh.name("cli2"), "--service", "client2", "--", "/usr/bin/python3", "-c",
                               "import socket; c = socket.create_connection(('echo', 9000), timeout=5); c.sendall(b'hi'); print(c.recv(2).decode())"])
        XCTAssertEqual(fresh.stdout, "hi\n", fresh.output)
        XCTAssertTrue(mesh.agentLog.contains("renewed certificate"), mesh.agentLog.suffix(2000).description)
    }
}
