import Foundation
import WeftCore
import XCTest

/// W3C trace context through the mesh and spans exported over OTLP/gRPC to a real gRPC
/// receiver (Python grpcio, decoding the protobuf itself): a client span and a server span
/// per hop, linked parent to child across two hops; a workload that drops the context is
/// reported.
final class TracingTests: XCTestCase {
    var mesh: MeshHarness!
    var receiver: Process?
    let spansFile = NSTemporaryDirectory() + "weft-spans-\(UUID().uuidString.prefix(8)).jsonl"

    /// An OTLP trace receiver: each span as a JSON line (ids in hex).
    static let receiverSource = #"""
    import sys, json, grpc
    from concurrent import futures
    out = open(sys.argv[1], "a", buffering=1)
    def fields(b):
        i = 0
        while i < len(b):
            key, i = varint(b, i); num, wt = key >> 3, key & 7
            if wt == 0: v, i = varint(b, i)
            elif wt == 1: v = int.from_bytes(b[i:i + 8], "little"); i += 8
            elif wt == 5: v = int.from_bytes(b[i:i + 4], "little"); i += 4
            elif wt == 2:
                n, i = varint(b, i); v = b[i:i + n]; i += n
            else: raise ValueError("wire type %d" % wt)
            yield num, v
    def varint(b, i):
        r = s = 0
        while True:
            c = b[i]; i += 1; r |= (c & 0x7f) << s; s += 7
            if c < 0x80: return r, i
    def export(request, context):
        for n1, rs in fields(request):
            if n1 != 1: continue
            service = ""
            for n2, v2 in fields(rs):
                if n2 == 1:
                    for n3, kv in fields(v2):
                        d = dict(fields(kv))
                        if d.get(1) == b"service.name": service = dict(fields(d[2])).get(1, b"").decode()
                if n2 != 2: continue
                for n3, sp in fields(v2):
                    if n3 != 2: continue
                    f = {}; attrs = {}
                    for n4, v4 in fields(sp):
                        if n4 == 9:
                            d = dict(fields(v4)); av = dict(fields(d[2]))
                            attrs[d[1].decode()] = av[1].decode() if 1 in av else av.get(3)
                        else: f[n4] = v4
                    out.write(json.dumps({"trace": f[1].hex(), "span": f[2].hex(), "parent": f.get(4, b"").hex(),
                                          "name": f[5].decode(), "kind": f[6], "service": service, "attrs": attrs,
                                          "start": f[7], "end": f[8]}) + "\n")
        return b""
    server = grpc.server(futures.ThreadPoolExecutor(4))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("opentelemetry.proto.collector.trace.v1.TraceService",
        {"Export": grpc.unary_unary_rpc_method_handler(export)}),))
    if len(sys.argv) > 3:  # TLS: CERT KEY [CA: client certificates required]
        cert, key = open(sys.argv[3], "rb").read(), open(sys.argv[4], "rb").read()
        ca = open(sys.argv[5], "rb").read() if len(sys.argv) > 5 else None
        port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(key, cert)], root_certificates=ca,
                                                                                  require_client_auth=ca is not None))
    else:
        port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    open(sys.argv[2], "w").write(str(port))
    server.wait_for_termination()
    """#

    /// front: calls back for every request, passing traceparent on unless told not to.
    static let front = #"""
    import sys, http.server, urllib.request
    propagate = sys.argv[2] == "propagate"
    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def do_GET(self):
            headers = {}
            if propagate and self.headers.get("traceparent"): headers["traceparent"] = self.headers["traceparent"]
            with urllib.request.urlopen(urllib.request.Request("http://back/", headers=headers), timeout=5) as r: body = r.read()
            self.send_response(200); self.send_header("content-length", str(len(body))); self.end_headers(); self.wfile.write(body)
        def log_message(self, *a): pass
    http.server.ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), H).serve_forever()
    """#

    override func setUpWithError() throws {
        guard FileManager.default.fileExists(atPath: "/usr/lib/python3/dist-packages/grpc") else {
            throw XCTSkip("SKIPPED: python3-grpcio is not installed; run scripts/setup-deps")
        }
        let (process, port) = try Self.startReceiver(spansFile: spansFile)
        receiver = process
        mesh = try MeshHarness.start(agentArgs: ["--tracing-collector", "127.0.0.1:\(port)", "--trace-sampling", "100"])
        try Self.front.write(toFile: mesh.dir + "/front.py", atomically: true, encoding: .utf8)
        try ControlPlaneTests.app.write(toFile: mesh.dir + "/back.py", atomically: true, encoding: .utf8)
    }

    /// The OTLP receiver writing spans to `spansFile`; `tls`: CERT KEY [CA] (TLS, and client
    /// certificates required with a CA). Returns it and its port.
    static func startReceiver(spansFile: String, tls: [String] = []) throws -> (Process, Int) {
        let script = NSTemporaryDirectory() + "weft-otlp-\(UUID().uuidString.prefix(8)).py", portFile = script + ".port"
        try receiverSource.write(toFile: script, atomically: true, encoding: .utf8)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        p.arguments = [script, spansFile, portFile] + tls
        p.standardError = FileHandle.nullDevice
        try p.run()
        var port = 0
        for _ in 0..<100 where port == 0 {
            usleep(100_000)
            port = Int((try? String(contentsOfFile: portFile, encoding: .utf8)) ?? "") ?? 0
        }
        try? FileManager.default.removeItem(atPath: script)
        try? FileManager.default.removeItem(atPath: portFile)
        guard port > 0 else {
            p.terminate()
            throw HarnessError("the OTLP receiver did not start")
        }
        return (p, port)
    }

    static func spans(in file: String) -> [[String: Any]] {
        ((try? String(contentsOfFile: file, encoding: .utf8)) ?? "").split(separator: "\n").compactMap {
            try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
        }
    }

    override func tearDown() {
        mesh?.shutdown()
        if let mesh { XCTAssertEqual(mesh.ourNetns(), [], "teardown must leave no netns") }
        receiver?.terminate()
        receiver?.waitUntilExit()
        try? FileManager.default.removeItem(atPath: spansFile)
    }

    /// back (answers "ok") behind front (calls back, passing traceparent on or dropping it).
    func startFrontAndBack(_ mode: String) throws -> String {
        let front = mesh.name("front"), back = mesh.name("back")
        _ = try mesh.startWeft(["run", "--name", back, "--service", "back", "--port", "80:8000/http", "--", "/usr/bin/python3", mesh.dir + "/back.py", "8000"])
        _ = try mesh.startWeft(["run", "--name", front, "--service", "front", "--port", "80:8001/http", "--",
                                "/usr/bin/python3", mesh.dir + "/front.py", "8001", mode])
        try mesh.waitForListener(netns: back, port: 8000)
        try mesh.waitForListener(netns: front, port: 8001)
        return front
    }

    func spans() -> [[String: Any]] { Self.spans(in: spansFile) }

    func testSpansLinkParentToChildAcrossTwoHops() throws {
        let front = try startFrontAndBack("propagate"), client = mesh.name("cli")
        let r = mesh.weft(["run", "--name", client, "--service", "client", "--", "curl", "-sS", "-m", "10", "-D", "-", "http://front/"], timeout: 60)
        XCTAssertEqual(r.status, 0, r.output)
        var all: [[String: Any]] = []
        try mesh.waitUntil("four spans at the receiver", timeout: 15) {
            all = self.spans()
            return all.count >= 4
        }
        let traces = Set(all.compactMap { $0["trace"] as? String })
        XCTAssertEqual(traces.count, 1, "one trace: \(all)")
        func span(_ kind: Int, _ name: String) throws -> [String: Any] {
            try XCTUnwrap(all.first { $0["kind"] as? Int == kind && ($0["name"] as? String)?.hasPrefix(name) == true }, "\(kind) \(name) in \(all)")
        }
        let clientToFront = try span(3, "front.default.svc.cluster.local:80")
        let frontServer = try span(2, "front.default.svc.cluster.local:8001")
        let frontToBack = try span(3, "back.default.svc.cluster.local:80")
        let backServer = try span(2, "back.default.svc.cluster.local:8000")
        XCTAssertEqual(clientToFront["parent"] as? String, "", "the client sent no context: the trace starts at its proxy")
        XCTAssertEqual(frontServer["parent"] as? String, clientToFront["span"] as? String)
        XCTAssertEqual(frontToBack["parent"] as? String, frontServer["span"] as? String, "front passed traceparent on")
        XCTAssertEqual(backServer["parent"] as? String, frontToBack["span"] as? String)
        XCTAssertEqual(clientToFront["service"] as? String, "client.default")
        XCTAssertEqual(backServer["service"] as? String, "back.default")
        XCTAssertEqual((clientToFront["attrs"] as? [String: Any])?["http.status_code"] as? Int, 200)
        XCTAssertEqual((frontServer["attrs"] as? [String: Any])?["peer.principal"] as? String, "spiffe://weft.local/ns/default/sa/client")
        XCTAssertLessThanOrEqual(clientToFront["start"] as? Int ?? 0, frontServer["start"] as? Int ?? 0)
    }

    /// gRPC (HTTP/2 through the tunnel): the destination's proxy serves the caller's HTTP/2
    /// stream by stream, so every call gets a server span, child of the caller's client span,
    /// with its gRPC status; a failed call (NOT_FOUND) is not a server error.
    func testGRPCCallsGetAServerSpanEach() throws {
        let server = mesh.name("greeter"), client = mesh.name("gcli")
        try ProtocolTests.grpcServer.write(toFile: mesh.dir + "/grpc_server.py", atomically: true, encoding: .utf8)
        try #"""
        import grpc
        ch = grpc.insecure_channel("greeter:50051")
        print("say", ch.unary_unary("/weft.Test/Say")(b"x", timeout=10).decode())
        print("count", ",".join(x.decode() for x in ch.unary_stream("/weft.Test/Count")(b"3", timeout=10)))
        try:
            ch.unary_unary("/weft.Test/Fail")(b"", timeout=10)
        except grpc.RpcError as e:
            print("fail", e.code().name)
        """#.write(toFile: mesh.dir + "/grpc_calls.py", atomically: true, encoding: .utf8)
        _ = try mesh.startWeft(["run", "--name", server, "--service", "greeter", "--port", "50051/grpc", "--",
                                "/usr/bin/python3", mesh.dir + "/grpc_server.py", "50051", "a"])
        try mesh.waitForListener(netns: server, port: 50051)
        let r = mesh.weft(["run", "--name", client, "--service", "gclient", "--", "/usr/bin/python3", mesh.dir + "/grpc_calls.py"], timeout: 60)
        XCTAssertEqual(r.status, 0, r.output)
        XCTAssertTrue(r.output.contains("say hello x") && r.output.contains("count 0,1,2") && r.output.contains("fail NOT_FOUND"), r.output)
        var all: [[String: Any]] = []
        try mesh.waitUntil("six spans at the receiver", timeout: 15) {
            all = self.spans()
            return all.count >= 6
        }
        let clients = all.filter { $0["kind"] as? Int == 3 }, servers = all.filter { $0["kind"] as? Int == 2 }
        XCTAssertEqual(clients.count, 3, "\(all)")
        XCTAssertEqual(servers.count, 3, "one server span per call, not per connection: \(all)")
        for s in servers {
            let parent = clients.first { $0["span"] as? String == s["parent"] as? String }
            XCTAssertNotNil(parent, "each server span is the child of a client span: \(all)")
            XCTAssertEqual(parent?["trace"] as? String, s["trace"] as? String)
            XCTAssertEqual(s["service"] as? String, "greeter.default")
            XCTAssertTrue((s["name"] as? String)?.hasPrefix("greeter.default.svc.cluster.local:50051") == true, "\(s)")
            let attrs = s["attrs"] as? [String: Any] ?? [:]
            XCTAssertEqual(attrs["peer.principal"] as? String, "spiffe://weft.local/ns/default/sa/gclient")
            XCTAssertEqual(attrs["http.status_code"] as? Int, 200)
        }
        func grpcStatus(_ spans: [[String: Any]], _ path: String) -> Int? {
            (spans.first { ($0["attrs"] as? [String: Any])?["http.url"] as? String == path }?["attrs"] as? [String: Any])?["rpc.grpc.status_code"] as? Int
        }
        for spans in [clients, servers] {
            XCTAssertEqual(grpcStatus(spans, "/weft.Test/Say"), 0, "\(spans)")
            XCTAssertEqual(grpcStatus(spans, "/weft.Test/Count"), 0, "\(spans)")
            XCTAssertEqual(grpcStatus(spans, "/weft.Test/Fail"), 5, "\(spans)")
        }
    }

    /// A plaintext caller (outside the mesh, PERMISSIVE) of ports declared `/http`: with
    /// tracing on the destination serves them per request, and the caller's first bytes pick
    /// the gate — h2c with prior knowledge is served as HTTP/2 (it got a 400 from the
    /// HTTP/1.1 gate before), HTTP/1.1 as before; each request gets a server span.
    func testPlaintextH2cAndHTTP11OnAnHTTPPortAreBothServed() throws {
        guard let nghttpd = HostTool.find("nghttpd") else { throw XCTSkip("nghttpd is not installed (scripts/setup-deps installs it)") }
        let server = mesh.name("dual")
        try FileManager.default.createDirectory(atPath: mesh.dir + "/www", withIntermediateDirectories: true, attributes: [.posixPermissions: 0o755])
        FileManager.default.createFile(atPath: mesh.dir + "/www/h2.txt", contents: Data("over h2c\n".utf8), attributes: [.posixPermissions: 0o644])
        _ = try mesh.startWeft(["run", "--name", server, "--service", "dual", "--port", "8000/http", "--port", "8001/http", "--", "sh", "-c",
                                "/usr/bin/python3 \(mesh.dir)/back.py 8001 & exec \(nghttpd) --no-tls -d \(mesh.dir)/www 8000"])
        try mesh.waitForListener(netns: server, port: 8000)
        try mesh.waitForListener(netns: server, port: 8001)
        let ip = try XCTUnwrap(try mesh.workload(server)?.spec.podIP)
        let h2 = mesh.run(["curl", "-sS", "-m", "10", "--http2-prior-knowledge", "-w", " %{http_version} %{http_code}", "http://\(ip):8000/h2.txt"])
        XCTAssertEqual(h2.stdout, "over h2c\n 2 200", h2.output)
        let h1 = mesh.run(["curl", "-sS", "-m", "10", "-w", " %{http_version} %{http_code}", "http://\(ip):8001/"])
        XCTAssertEqual(h1.stdout, "ok\n 1.1 200", h1.output)
        try mesh.waitUntil("a server span for each request", timeout: 15) {
            self.spans().filter { $0["kind"] as? Int == 2 }.count >= 2
        }
        let paths = Set(spans().filter { $0["kind"] as? Int == 2 }.compactMap { ($0["attrs"] as? [String: Any])?["http.url"] as? String })
        XCTAssertEqual(paths, ["/h2.txt", "/"])
    }

    func testAWorkloadThatDropsTheContextIsReported() throws {
        let front = try startFrontAndBack("drop"), client = mesh.name("cli")
        let r = mesh.weft(["run", "--name", client, "--service", "client", "--", "sh", "-c",
                           "for i in 1 2 3; do curl -sS -m 10 -o /dev/null http://front/; done"], timeout: 60)
        XCTAssertEqual(r.status, 0, r.output)
        let metrics = mesh.run(["curl", "-sS", "http://127.0.0.1:\(mesh.metricsPort)/metrics"]).stdout
        XCTAssertTrue(metrics.contains(#"weft_trace_context_dropped_total{workload="\#(front)",workload_namespace="default"} 3"#),
                      metrics.split(separator: "\n").filter { $0.contains("trace") }.joined(separator: "\n"))
        XCTAssertTrue(mesh.agentLog.contains("workload \(front) sent a request without trace context while serving a traced one"), mesh.agentLog.suffix(2000).description)
    }

    /// The W3C trace-context test suite (Tests/vendor/w3c-trace-context, Levels 1 and 2, strict)
    /// through the mesh: its harness and the test service are both meshed workloads, so every
    /// request it sends crosses the harness's proxy (client span), the service's proxy (server
    /// span), the service (which, like any traced app, copies traceparent and tracestate onto
    /// its callbacks), the service's proxy again and the harness's — and every check on what
    /// arrives back must pass.
    func testTheW3CTraceContextSuitePassesThroughTheMesh() throws {
        guard FileManager.default.fileExists(atPath: "/usr/lib/python3/dist-packages/aiohttp") else {
            throw XCTSkip("SKIPPED: python3-aiohttp is not installed; run scripts/setup-deps")
        }
        let suite = MeshHarness.packageRoot.appendingPathComponent("Tests/vendor/w3c-trace-context").path
        try Self.traceService.write(toFile: mesh.dir + "/tracesvc.py", atomically: true, encoding: .utf8)
        let service = mesh.name("svc"), harness = mesh.name("harness")
        _ = try mesh.startWeft(["run", "--name", service, "--service", "tracesvc", "--port", "5000/http", "--",
                                "/usr/bin/python3", mesh.dir + "/tracesvc.py", "5000"])
        try mesh.waitForListener(netns: service, port: 5000)
        let out = mesh.dir + "/w3c.out"
        FileManager.default.createFile(atPath: out, contents: nil, attributes: [.posixPermissions: 0o666])
        let run = try mesh.startWeft(["run", "--name", harness, "--service", "harness", "--port", "7777/http", "--",
                                      "/usr/bin/env", "HARNESS_HOST=harness", "HARNESS_BIND_HOST=0.0.0.0", "HARNESS_PORT=7777",
                                      "SPEC_LEVEL=2", "STRICT_LEVEL=2", "PYTHONDONTWRITEBYTECODE=1", "/bin/sh", "-c",
                                      "cd \"$0\" && exec /usr/bin/python3 test.py http://tracesvc:5000/test >\"$1\" 2>&1", suite, out])
        let status = mesh.wait(run, timeout: 240)
        let report = (try? String(contentsOfFile: out, encoding: .utf8)) ?? ""
        XCTAssertEqual(status, 0, "W3C trace-context suite through the mesh:\n\(report.suffix(6000))")
        let ran = report.split(separator: "\n").first { $0.hasPrefix("Ran ") } ?? ""
        XCTAssertTrue(report.contains("\nOK"), "\(ran)\n\(report.suffix(3000))")
        XCTAssertFalse(report.contains("skipped="), "every test ran, Level 2 and the strict ones included:\n\(report.suffix(1500))")
        XCTAssertTrue(report.contains("test_propagates_random_flag"), "the Level 2 suite ran")
        XCTAssertGreaterThanOrEqual(Int(ran.split(separator: " ").dropFirst().first ?? "") ?? 0, 30, "the whole Level 1 suite ran: \(ran)")
        print("W3C trace-context suite through the mesh: \(ran) — OK")
    }

    /// The suite's test service: for each {url, arguments} it is sent, POST arguments to url,
    /// carrying traceparent and tracestate on as received (every value, in order).
    static let traceService = #"""
    import sys, json, http.server, http.client, urllib.parse
    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def do_POST(self):
            n = int(self.headers.get("content-length") or 0)
            actions = json.loads(self.rfile.read(n) or b"[]") or []
            carried = [(k, v) for k, v in self.headers.items() if k.lower() in ("traceparent", "tracestate")]
            for a in actions:
                u = urllib.parse.urlsplit(a["url"])
                c = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=10)
                body = json.dumps(a.get("arguments", [])).encode()
                c.putrequest("POST", u.path or "/")
                c.putheader("content-type", "application/json")
                c.putheader("content-length", str(len(body)))
                for k, v in carried: c.putheader(k, v)
                c.endheaders(body)
                c.getresponse().read()
                c.close()
            out = b"{}"
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)
        def log_message(self, *a): pass
    http.server.ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), H).serve_forever()
    """#
}
