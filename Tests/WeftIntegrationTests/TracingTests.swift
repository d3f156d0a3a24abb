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
        let script = NSTemporaryDirectory() + "weft-otlp-\(UUID().uuidString.prefix(8)).py", portFile = script + ".port"
        try Self.receiverSource.write(toFile: script, atomically: true, encoding: .utf8)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        p.arguments = [script, spansFile, portFile]
        p.standardError = FileHandle.nullDevice
        try p.run()
        receiver = p
        var port = 0
        for _ in 0..<100 where port == 0 {
            usleep(100_000)
            port = Int((try? String(contentsOfFile: portFile, encoding: .utf8)) ?? "") ?? 0
        }
        try? FileManager.default.removeItem(atPath: script)
        try? FileManager.default.removeItem(atPath: portFile)
        guard port > 0 else { throw HarnessError("the OTLP receiver did not start") }
        mesh = try MeshHarness.start(agentArgs: ["--tracing-collector", "127.0.0.1:\(port)", "--trace-sampling", "100"])
        try Self.front.write(toFile: mesh.dir + "/front.py", atomically: true, encoding: .utf8)
        try ControlPlaneTests.app.write(toFile: mesh.dir + "/back.py", atomically: true, encoding: .utf8)
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

    func spans() -> [[String: Any]] {
        ((try? String(contentsOfFile: spansFile, encoding: .utf8)) ?? "").split(separator: "\n").compactMap {
            try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
        }
    }

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
}
