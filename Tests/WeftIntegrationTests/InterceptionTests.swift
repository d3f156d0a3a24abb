import Foundation
import WeftCore
import XCTest

/// Unmodified programs under `weft run`, through real namespaces and a real agent.
final class InterceptionTests: XCTestCase {
    var mesh: MeshHarness!

    override func setUpWithError() throws { mesh = try MeshHarness.start() }
    override func tearDown() {
        mesh?.shutdown()
        if let mesh { XCTAssertEqual(mesh.ourNetns(), [], "teardown must leave no netns") }
    }

    /// Serves `files` with an unmodified `python3 -m http.server` under `weft run`.
    func startHTTPServer(name: String, port: Int, files: [String: String], bind: String = "0.0.0.0") throws -> (MeshHarness.Background, WorkloadStatus) {
        let root = mesh.dir + "/www-" + name
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o755])
        for (file, body) in files {
            FileManager.default.createFile(atPath: root + "/" + file, contents: Data(body.utf8), attributes: [.posixPermissions: 0o644])
        }
        let server = try mesh.startWeft(["run", "--name", mesh.name(name), "--service", "web", "--port", "\(port)",
                                         "--label", "version=v1", "--", "/usr/bin/python3", "-m", "http.server", "\(port)",
                                         "--bind", bind, "--directory", root])
        try mesh.waitForListener(netns: mesh.name(name), port: port)
        let status = try XCTUnwrap(try mesh.workload(mesh.name(name)), "server workload not attached: \(server.stderr)")
        return (server, status)
    }

    func testUnmodifiedCurlReachesUnmodifiedPythonServerThroughBothProxies() throws {
        let (server, srv) = try startHTTPServer(name: "srv", port: 8123, files: ["hello.txt": "meshed hello\n"])
        let ip = try XCTUnwrap(srv.spec.podIP)
        XCTAssertEqual(srv.spec.labels["version"], "v1")

        let client = mesh.weft(["run", "--name", mesh.name("cli"), "--service", "client", "--",
                                "curl", "-sS", "-m", "10", "http://\(ip):8123/hello.txt"], timeout: 30)
        XCTAssertEqual(client.status, 0, client.output)
        XCTAssertEqual(client.stdout, "meshed hello\n")

        // The server saw the request arrive from loopback: the inbound proxy delivered it,
        // on the port the client dialled (the original destination).
        XCTAssertTrue(server.stderr.contains("127.0.0.1 - - "), server.stderr)
        XCTAssertTrue(server.stderr.contains("\"GET /hello.txt HTTP/1.1\" 200"), server.stderr)

        let after = try XCTUnwrap(try mesh.workload(mesh.name("srv")))
        XCTAssertGreaterThanOrEqual(after.counters.connectionsInbound, 1, "inbound proxy never saw the connection")
        XCTAssertGreaterThan(after.counters.bytesInboundReceived, 0)
        XCTAssertGreaterThan(after.counters.bytesInboundSent, "meshed hello\n".count)
        // The client workload is gone, but the agent log names its outbound connection.
        XCTAssertTrue(mesh.agentLog.contains("destination=\(ip):8123"), "outbound proxy did not forward to the original destination")
        XCTAssertTrue(mesh.agentLog.contains("decidedBy=sniffed destination=\(ip):8123 protocol=http/1.1"),
                      "the outbound proxy detected HTTP/1.1: \(mesh.agentLog.suffix(2000))")
    }

    func testIPv6OriginalDestinationThroughBothProxies() throws {
        let (server, srv) = try startHTTPServer(name: "srv6", port: 8125, files: ["six.txt": "over IPv6\n"], bind: "::")
        let v6 = try XCTUnwrap(srv.spec.podIPv6, "pods get an IPv6 address from the agent's ULA prefix")
        XCTAssertEqual(v6.family, .v6)
        let client = mesh.weft(["run", "--name", mesh.name("cli6"), "--service", "client", "--",
                                "curl", "-6", "-sS", "-m", "10", "http://[\(v6)]:8125/six.txt"], timeout: 30)
        XCTAssertEqual(client.status, 0, client.output)
        XCTAssertEqual(client.stdout, "over IPv6\n")
        // Outbound read the IPv6 original destination; inbound delivered over [::1].
        XCTAssertTrue(mesh.agentLog.contains("destination=[\(v6)]:8125"), mesh.agentLog.suffix(2000).description)
        XCTAssertTrue(mesh.agentLog.contains("destination=[::1]:8125"))
        XCTAssertTrue(server.stderr.contains("::1 - - "), server.stderr)
    }

    func testCountersOfALiveClientProveOutboundInterception() throws {
        let (_, srv) = try startHTTPServer(name: "srv", port: 8124, files: ["a": String(repeating: "x", count: 5000)])
        let ip = try XCTUnwrap(srv.spec.podIP)
        // A client that stays alive after its request so its counters can be read.
        let client = try mesh.startWeft(["run", "--name", mesh.name("cli"), "--service", "client", "--", "sh", "-c",
                                         "curl -sS -m 10 -o /dev/null http://\(ip):8124/a && echo done && sleep 30"])
        try mesh.waitUntil("client request", timeout: 20) { client.stdout.contains("done") }
        let cli = try XCTUnwrap(try mesh.workload(mesh.name("cli")))
        XCTAssertEqual(cli.counters.connectionsOutbound, 1)
        XCTAssertGreaterThan(cli.counters.bytesOutboundSent, 0)
        XCTAssertGreaterThanOrEqual(cli.counters.bytesOutboundReceived, 5000)
        let table = mesh.weft(["get", "workloads"]).stdout
        XCTAssertTrue(table.contains(mesh.name("cli")) && table.contains("0/1"), table)
    }

    func testHalfCloseTravelsThroughTheMesh() throws {
        // The server answers only after the client's FIN: the FIN must cross both proxies
        // after the data, and the answer must still come back.
        let server = try mesh.startWeft(["run", "--name", mesh.name("echo"), "--service", "echo", "--", "/usr/bin/python3", "-c", """
            import socket
            s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("0.0.0.0", 9000)); s.listen()
            while True:
                c, _ = s.accept(); data = b""
                while True:
                    chunk = c.recv(65536)
                    if not chunk: break
                    data += chunk
                c.sendall(b"got %d bytes" % len(data)); c.close()
            """])
        try mesh.waitForListener(netns: mesh.name("echo"), port: 9000)
        let ip = try XCTUnwrap(try mesh.workload(mesh.name("echo"))?.spec.podIP)
        let client = mesh.weft(["run", "--name", mesh.name("cli"), "--service", "client", "--", "/usr/bin/python3", "-c", """
            import socket
            c = socket.create_connection(("\(ip)", 9000), timeout=10)
            c.sendall(b"x" * 300000); c.shutdown(socket.SHUT_WR)
            reply = b""
            while True:
                chunk = c.recv(65536)
                if not chunk: break
                reply += chunk
            print(reply.decode())
            """], timeout: 30)
        XCTAssertEqual(client.status, 0, client.output)
        XCTAssertEqual(client.stdout, "got 300000 bytes\n", server.stderr)
    }

    func testRefusedUpstreamIsResetAndCounted() throws {
        // A meshed workload with nothing listening on the dialled port.
        let idle = try mesh.startWeft(["run", "--name", mesh.name("idle"), "--service", "idle", "--", "sleep", "60"])
        try mesh.waitUntil("idle attached", timeout: 20) { try self.mesh.workload(self.mesh.name("idle")) != nil }
        let ip = try XCTUnwrap(try mesh.workload(mesh.name("idle"))?.spec.podIP)
        let started = Date()
        // Opaque bytes (L4): the reset travels back as a reset. HTTP (detected, L7): a 503
        // that names the failure.
        let client = mesh.weft(["run", "--name", mesh.name("cli"), "--service", "client", "--", "sh", "-c",
                                "printf 'opaque' | curl -sS -m 10 telnet://\(ip):9999; echo rc=$?; curl -sS -m 10 -D - http://\(ip):9999/"],
                               timeout: 30)
        XCTAssertTrue(client.stdout.contains("rc=56") || client.stdout.contains("rc=7") || client.stdout.contains("rc=52"),
                      client.output)
        XCTAssertTrue(client.stdout.contains("HTTP/1.1 503"), client.output + "\n--- agent ---\n" + mesh.agentLog.suffix(6000))
        XCTAssertTrue(client.stdout.contains("x-weft-response-flags: UC") || client.stdout.contains("x-weft-response-flags: UF"), client.output)
        XCTAssertLessThan(Date().timeIntervalSince(started), 8, "a refused upstream must fail fast, not hang")
        XCTAssertGreaterThanOrEqual(try XCTUnwrap(try mesh.workload(mesh.name("idle"))).counters.connectionErrors, 1)
        XCTAssertTrue(mesh.agentLog.contains("inbound connection refused: upstream 127.0.0.1:9999"), mesh.agentLog.suffix(2000).description)
        _ = idle
    }
}
