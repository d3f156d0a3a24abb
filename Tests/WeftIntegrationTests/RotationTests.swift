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

    func startEcho() throws {
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
    }

    /// One connection, a line every 250 ms, each echoed back; prints "ok LINES".
    func startStreamingClient(lines: Int) throws -> MeshHarness.Background {
        try mesh.startWeft(["run", "--name", mesh.name("cli"), "--service", "client", "--", "/usr/bin/python3", "-c", """
            import socket, time
            c = socket.create_connection(("echo", 9000), timeout=5)
            n = 0
            for i in range(\(lines)):
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
    }

    func freshCall(_ name: String) -> MeshHarness.Result {
        mesh.weft(["run", "--name", mesh.name(name), "--service", "client2", "--", "/usr/bin/python3", "-c",
                   "import socket; c = socket.create_connection(('echo', 9000), timeout=5); c.sendall(b'hi'); print(c.recv(2).decode())"])
    }

    func testRenewalKeepsALongLivedConnectionStreaming() throws {
        try startEcho()
        let first = try XCTUnwrap(try certs()[mesh.name("echo")])
        XCTAssertEqual(first.issued, 1)
        let client = try startStreamingClient(lines: 96)  // 24 s
        try mesh.waitUntil("both certificates renewed", timeout: 40) {
            let now = try self.certs()
            return (now[self.mesh.name("echo")]?.issued ?? 0) >= 2 && (now[self.mesh.name("cli")]?.issued ?? 0) >= 2
        }
        let renewed = try XCTUnwrap(try certs()[mesh.name("echo")])
        XCTAssertNotEqual(renewed.serial, first.serial)
        XCTAssertEqual(mesh.wait(client, timeout: 40), 0, client.stderr)
        XCTAssertEqual(client.stdout, "ok 96\n", client.stderr)
        // A new caller after the renewal: a new tunnel connection with the new certificates.
        let fresh = freshCall("cli2")
        XCTAssertEqual(fresh.stdout, "hi\n", fresh.output)
        XCTAssertTrue(mesh.agentLog.contains("renewed certificate"), mesh.agentLog.suffix(2000).description)
    }

    /// Root rotation in two steps while a connection streams: new root signs, both trusted;
    /// then the old one dropped. Nothing breaks on the way.
    func testRootRotationWithoutDowntime() throws {
        try startEcho()
        let ca = mesh.dir + "/state/ca"
        try FileManager.default.copyItem(atPath: ca + "/root-cert.pem", toPath: mesh.dir + "/old-root.pem")
        let before = try XCTUnwrap(try certs()[mesh.name("echo")])
        let client = try startStreamingClient(lines: 40)  // 10 s
        usleep(1_000_000)
        let rotate = mesh.weft(["ca", "rotate"])
        XCTAssertEqual(rotate.status, 0, rotate.output)
        XCTAssertTrue(rotate.stdout.contains("2 root(s) trusted"), rotate.stdout)
        let after = try XCTUnwrap(try certs()[mesh.name("echo")])
        XCTAssertNotEqual(after.serial, before.serial, "re-issued at once")
        // The new certificate chains to the new root, not the old one.
        let json = mesh.weft(["get", "certs", "-o", "json"]).stdout
        struct Reply: Decodable { struct C: Decodable { let workload: String; let chainPEM: [String] }; let workloads: [C]; let bundlePEM: String }
        let reply = try JSONDecoder().decode(Reply.self, from: Data(json.utf8))
        let leaf = try XCTUnwrap(reply.workloads.first { $0.workload == mesh.name("echo") }).chainPEM[0]
        try leaf.write(toFile: mesh.dir + "/new-svid.pem", atomically: true, encoding: .utf8)
        XCTAssertEqual(mesh.run(["openssl", "verify", "-CAfile", ca + "/root-cert.pem", mesh.dir + "/new-svid.pem"]).status, 0)
        XCTAssertNotEqual(mesh.run(["openssl", "verify", "-CAfile", mesh.dir + "/old-root.pem", mesh.dir + "/new-svid.pem"]).status, 0)
        XCTAssertEqual(reply.bundlePEM.components(separatedBy: "BEGIN CERTIFICATE").count - 1, 2)
        XCTAssertEqual(freshCall("cli2").stdout, "hi\n")
        XCTAssertEqual(mesh.wait(client, timeout: 30), 0, client.stderr)
        XCTAssertEqual(client.stdout, "ok 40\n", "the connection made before the rotation carried on: \(client.stderr)")
        let finish = mesh.weft(["ca", "rotate", "--finish"])
        XCTAssertEqual(finish.status, 0, finish.output)
        XCTAssertTrue(finish.stdout.contains("1 root(s) trusted"), finish.stdout)
        XCTAssertEqual(freshCall("cli3").stdout, "hi\n")
        let again = mesh.weft(["ca", "rotate", "--finish"])
        XCTAssertNotEqual(again.status, 0)
        XCTAssertTrue(again.stderr.contains("no rotation in progress"), again.output)
    }
}
