import Foundation
import WeftCore
import XCTest

/// Protocol detection and HTTP/2 through real namespaces: h2c from curl with prior
/// knowledge, gRPC unary, server-streaming and error calls from an unmodified grpcio client
/// (trailers intact), a banner-first TCP server that is never kept waiting, and what each
/// connection was detected as.
final class ProtocolTests: XCTestCase {
    var mesh: MeshHarness!

    static let grpcServer = #"""
    import sys, grpc
    from concurrent import futures
    def say(req, ctx):
        ctx.set_trailing_metadata((("x-served-by", sys.argv[2]),))
        return b"hello " + req
    def count(req, ctx):
        for i in range(int(req)):
            yield b"%d" % i
        ctx.set_trailing_metadata((("x-count", req.decode()),))
    def fail(req, ctx):
        ctx.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
    handlers = grpc.method_handlers_generic_handler("weft.Test", {
        "Say": grpc.unary_unary_rpc_method_handler(say),
        "Count": grpc.unary_stream_rpc_method_handler(count),
        "Fail": grpc.unary_unary_rpc_method_handler(fail)})
    server = grpc.server(futures.ThreadPoolExecutor(4))
    server.add_generic_rpc_handlers((handlers,))
    server.add_insecure_port("0.0.0.0:" + sys.argv[1])
    server.start()
    server.wait_for_termination()
    """#

    static let grpcClient = #"""
    import sys, grpc
    ch = grpc.insecure_channel(sys.argv[1])
    resp, call = ch.unary_unary("/weft.Test/Say").with_call(b"mesh", timeout=10)
    print("say", resp.decode(), dict(call.trailing_metadata()).get("x-served-by"))
    say = ch.unary_unary("/weft.Test/Say")
    print("replicas", ",".join(sorted({dict(say.with_call(b"x", timeout=10)[1].trailing_metadata())["x-served-by"] for _ in range(20)})))
    it = ch.unary_stream("/weft.Test/Count")(b"5", timeout=10)
    print("count", ",".join(x.decode() for x in it), dict(it.trailing_metadata()).get("x-count"))
    try:
        ch.unary_unary("/weft.Test/Fail")(b"", timeout=10)
        print("fail none")
    except grpc.RpcError as e:
        print("fail", e.code().name, e.details())
    """#

    /// On the first port it speaks first: a banner on accept, then echoes lines. A client
    /// that waits for the banner before sending anything hangs if the mesh waits for client
    /// bytes. On the second port it only echoes (the client speaks first).
    static let bannerServer = #"""
    import socket, sys, threading
    def listen(port, banner):
        srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("0.0.0.0", port)); srv.listen(16)
        while True:
            c, _ = srv.accept()
            threading.Thread(target=serve, args=(c, banner), daemon=True).start()
    def serve(c, banner):
        if banner:
            c.sendall(b"220 banner ready\r\n")
        while True:
            data = c.recv(4096)
            if not data: break
            c.sendall(b"echo " + data)
        c.close()
    threading.Thread(target=listen, args=(int(sys.argv[2]), False), daemon=True).start()
    listen(int(sys.argv[1]), True)
    """#

    static let probeClient = #"""
    import socket, sys
    def talk(port, first, wait_banner):
        s = socket.create_connection(("banner", port), timeout=5)
        out = b""
        if wait_banner:
            out += s.recv(100)
        s.sendall(first)
        out += s.recv(4096)
        s.close()
        return out
    print("banner", talk(2525, b"hi\n", True))
    print("tls", talk(2526, b"\x16\x03\x01\x00\x05hello", False))
    print("opaque", talk(2526, b"\x00\x01binary", False))
    print("halfhttp", talk(2526, b"GE", False))
    """#

    override func setUpWithError() throws {
        for tool in ["nghttpd", "curl"] where HostTool.find(tool) == nil {
            throw XCTSkip("\(tool) is not installed (scripts/setup-deps installs it)")
        }
        guard FileManager.default.fileExists(atPath: "/usr/lib/python3/dist-packages/grpc") else {
            throw XCTSkip("python3-grpcio is not installed (scripts/setup-deps installs it)")
        }
        mesh = try MeshHarness.start()
        for (file, text) in [("grpc_server.py", Self.grpcServer), ("grpc_client.py", Self.grpcClient),
                             ("banner.py", Self.bannerServer), ("probe.py", Self.probeClient)] {
            try text.write(toFile: "\(mesh.dir)/\(file)", atomically: true, encoding: .utf8)
            chmod("\(mesh.dir)/\(file)", 0o644)
        }
        try FileManager.default.createDirectory(atPath: mesh.dir + "/www", withIntermediateDirectories: true)
        try "served over h2\n".write(toFile: mesh.dir + "/www/hello.txt", atomically: true, encoding: .utf8)
        chmod(mesh.dir + "/www", 0o755)
        chmod(mesh.dir + "/www/hello.txt", 0o644)
        chmod(mesh.dir, 0o755)
    }

    override func tearDown() {
        mesh?.shutdown()
        if let mesh { XCTAssertEqual(mesh.ourNetns(), [], "teardown must leave no netns") }
    }

    /// Runs a script in a meshed client workload that outlives it, so its connection
    /// records can be read afterwards.
    func client(_ script: String) throws -> MeshHarness.Result {
        let ns = mesh.name("cli")
        if try mesh.workload(ns) == nil {
            _ = try mesh.startWeft(["run", "--name", ns, "--service", "client", "--", "sleep", "300"])
            try mesh.waitUntil("client workload attached", timeout: 20) { try self.mesh.workload(ns) != nil }
        }
        return mesh.run(["ip", "netns", "exec", ns, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                         "sh", "-c", script], timeout: 60)
    }

    func testHTTP2PriorKnowledgeFromCurlIsDetectedAndRouted() throws {
        // 8080 undeclared (detected), 8443 declared /http2.
        _ = try mesh.startWeft(["run", "--name", mesh.name("files"), "--service", "files", "--port", "8080", "--port", "8443:8080/http2",
                                "--", HostTool.find("nghttpd")!, "--no-tls", "-d", mesh.dir + "/www", "8080"])
        try mesh.waitForListener(netns: mesh.name("files"), port: 8080)
        let r = try client("""
            curl -sS -m 10 --http2-prior-knowledge -w 'version=%{http_version}\\n' http://files:8080/hello.txt && \
            curl -sS -m 10 --http2-prior-knowledge -w 'version=%{http_version}\\n' http://files:8443/hello.txt && \
            curl -sS -m 10 --http2-prior-knowledge -o /dev/null -w 'missing=%{http_code}\\n' http://files:8080/nope
            """)
        XCTAssertEqual(r.status, 0, r.output + "\n--- agent ---\n" + mesh.agentLog.suffix(3000))
        XCTAssertEqual(r.stdout.components(separatedBy: "served over h2\nversion=2").count - 1, 2, r.stdout)
        XCTAssertTrue(r.stdout.contains("missing=404"), r.stdout)
        let w = try XCTUnwrap(try mesh.workload(mesh.name("cli")))
        XCTAssertGreaterThanOrEqual(w.counters.protocolHTTP2, 3, "\(w.counters)")
        XCTAssertGreaterThanOrEqual(w.counters.httpRequests, 3, "requests went through the L7 path: \(w.counters)")
        let h2 = w.recentConnections.filter { $0.proto == "h2c" }
        XCTAssertTrue(h2.contains { $0.destination.hasSuffix(":8080") && $0.decidedBy == "sniffed" }, "\(w.recentConnections)")
        XCTAssertTrue(h2.contains { $0.destination.hasSuffix(":8443") && $0.decidedBy == "sniffed" }, "\(w.recentConnections)")
    }

    func testGRPCUnaryStreamingAndErrorsFromGrpcio() throws {
        // Two replicas: calls are balanced per request (per stream), not per connection.
        for replica in ["a", "b"] {
            _ = try mesh.startWeft(["run", "--name", mesh.name("g" + replica), "--service", "greeter", "--port", "50051/grpc",
                                    "--", "/usr/bin/python3", mesh.dir + "/grpc_server.py", "50051", replica])
            try mesh.waitForListener(netns: mesh.name("g" + replica), port: 50051)
        }
        let r = try client("GRPC_DNS_RESOLVER=native /usr/bin/python3 \(mesh.dir)/grpc_client.py greeter:50051")
        XCTAssertEqual(r.status, 0, r.output + "\n--- agent ---\n" + mesh.agentLog.suffix(3000))
        XCTAssertTrue(r.stdout.contains("say hello mesh a") || r.stdout.contains("say hello mesh b"),
                      "unary reply and its trailer: \(r.stdout)")
        XCTAssertTrue(r.stdout.contains("replicas a,b"), "20 calls on one HTTP/2 connection reach both replicas: \(r.stdout)")
        XCTAssertTrue(r.stdout.contains("count 0,1,2,3,4 5"), "server streaming with trailers: \(r.stdout)")
        XCTAssertTrue(r.stdout.contains("fail NOT_FOUND no such thing"), "a trailers-only error keeps its status: \(r.stdout)")
        let w = try XCTUnwrap(try mesh.workload(mesh.name("cli")))
        XCTAssertTrue(w.recentConnections.contains { $0.proto == "h2c" && $0.decidedBy == "sniffed" && $0.destination.hasSuffix(":50051") },
                      "\(w.recentConnections)")
        XCTAssertEqual(w.counters.httpRequests, 23, "\(w.counters)")
    }

    func testServerFirstTLSAndOpaqueBytesAreNeverHeldBack() throws {
        _ = try mesh.startWeft(["run", "--name", mesh.name("banner"), "--service", "banner", "--port", "2525", "--port", "2526",
                                "--", "/usr/bin/python3", mesh.dir + "/banner.py", "2525", "2526"])
        try mesh.waitForListener(netns: mesh.name("banner"), port: 2526)
        try mesh.waitForListener(netns: mesh.name("banner"), port: 2525)
        let r = try client("/usr/bin/python3 \(mesh.dir)/probe.py")
        XCTAssertEqual(r.status, 0, r.output)
        XCTAssertTrue(r.stdout.contains(#"banner b'220 banner ready\r\n"#), "the banner arrives before the client sends: \(r.stdout)")
        XCTAssertTrue(r.stdout.contains(#"tls b'echo \x16\x03\x01\x00\x05hello'"#), r.stdout)
        XCTAssertTrue(r.stdout.contains(#"opaque b'echo \x00\x01binary'"#), r.stdout)
        XCTAssertTrue(r.stdout.contains("halfhttp b'echo GE'"), "a stalled HTTP-looking prefix is released: \(r.stdout)")
        let w = try XCTUnwrap(try mesh.workload(mesh.name("cli")))
        let records = w.recentConnections.map { "\($0.destination.split(separator: ":").last ?? "") \($0.proto) \($0.decidedBy)" }
        // The client's own lookups go through the DNS proxy (UDP), so only these four are TCP.
        XCTAssertEqual(records, ["2525 opaque server-first", "2526 tls sniffed", "2526 opaque sniffed", "2526 opaque timeout"], "\(w.recentConnections)")
        XCTAssertEqual(w.counters.serverFirst, 1, "\(w.counters)")
        XCTAssertEqual(w.counters.protocolTLS, 1, "\(w.counters)")
        // The same records as users see them.
        let table = mesh.weft(["get", "connections", "--workload", mesh.name("cli")])
        XCTAssertEqual(table.status, 0, table.output)
        XCTAssertTrue(table.stdout.hasPrefix("WORKLOAD") && table.stdout.contains("server-first") && table.stdout.contains("tls"), table.stdout)
        let yaml = mesh.weft(["get", "connections", "-w", mesh.name("cli"), "-o", "yaml"])
        XCTAssertTrue(yaml.stdout.contains("decidedBy: timeout"), yaml.output)
        let missing = mesh.weft(["get", "connections", "-w", "no-such-workload"])
        XCTAssertNotEqual(missing.status, 0)
        XCTAssertTrue(missing.stderr.contains("no workload named no-such-workload"), missing.output)
    }
}
