import Foundation
import XCTest

/// RFC 9113 / RFC 7541 where it matters for safety, against the proxy's HTTP/2 side facing
/// apps (h2c prior knowledge from a meshed client). Each case is a fresh connection of raw
/// frames (hpack/hyperframe only encode); the proxy must answer with the right GOAWAY or
/// RST_STREAM, never hang or crash, and a well-behaved request afterwards must still work.
final class HTTP2ConformanceTests: XCTestCase {
    var mesh: MeshHarness!

    override func setUpWithError() throws {
        guard HostTool.find("nghttpd") != nil else { throw XCTSkip("nghttpd is not installed (scripts/setup-deps installs it)") }
        guard FileManager.default.fileExists(atPath: "/usr/lib/python3/dist-packages/hpack") else {
            throw XCTSkip("python3-h2 (hpack) is not installed (scripts/setup-deps installs it)")
        }
        mesh = try MeshHarness.start()
    }

    override func tearDown() {
        mesh?.shutdown()
        if let mesh { XCTAssertEqual(mesh.ourNetns(), [], "teardown must leave no netns") }
    }

    /// One line per case: `NAME <what the proxy did>`; `goaway:CODE`, `rst:CODE`, `closed`,
    /// `response:STATUS`, `silent` (nothing within the time limit).
    static let cases = #"""
    import socket, ssl, struct, sys, time
    from hpack import Encoder
    host, port = sys.argv[1], int(sys.argv[2])
    # tunnel mode: mTLS to a workload's port 15008 with a mesh certificate, CONNECT streams.
    TUNNEL = len(sys.argv) > 3
    if TUNNEL:
        cert, key, target, sink = sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6]
        CTX = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); CTX.check_hostname = False; CTX.verify_mode = ssl.CERT_NONE
        CTX.minimum_version = ssl.TLSVersion.TLSv1_3; CTX.load_cert_chain(cert, key); CTX.set_alpn_protocols(["h2"])
    PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    DATA, HEADERS, PRIORITY, RST, SETTINGS, PING, GOAWAY, WINDOW, CONT = 0, 1, 2, 3, 4, 6, 7, 8, 9
    CODES = {0: "NO_ERROR", 1: "PROTOCOL_ERROR", 2: "INTERNAL_ERROR", 3: "FLOW_CONTROL_ERROR", 5: "STREAM_CLOSED",
             6: "FRAME_SIZE_ERROR", 7: "REFUSED_STREAM", 8: "CANCEL", 9: "COMPRESSION_ERROR", 11: "ENHANCE_YOUR_CALM"}
    def frame(t, flags, sid, payload=b""):
        return struct.pack(">I", len(payload))[1:] + bytes([t, flags]) + struct.pack(">I", sid) + payload
    def request(path, method="GET"):
        if TUNNEL: return [(":method", "CONNECT"), (":authority", sink if path == "/upload" else target)]
        return [(":method", method), (":scheme", "http"), (":authority", "files:8080"), (":path", path)]
    def hdrs(path="/hello.txt", extra=()):
        return Encoder().encode(request(path) + list(extra))
    def connect():
        s = socket.create_connection((host, port), timeout=5)
        if TUNNEL: s = CTX.wrap_socket(s)
        s.sendall(PREFACE + frame(SETTINGS, 0, 0))
        return s
    def outcome(s, limit=5.0, sid_of_interest=None, ignore_headers=False):
        """Reads frames until GOAWAY, a RST_STREAM, a response HEADERS, close, or the limit."""
        buf = b""; end = time.time() + limit; s.settimeout(0.2)
        while time.time() < end:
            try:
                d = s.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return "closed"
            if not d:
                return "closed"
            buf += d
            while len(buf) >= 9:
                n = struct.unpack(">I", b"\0" + buf[:3])[0]
                if len(buf) < 9 + n: break
                t, flags, sid = buf[3], buf[4], struct.unpack(">I", buf[5:9])[0] & 0x7fffffff
                p = buf[9:9 + n]; buf = buf[9 + n:]
                if t == SETTINGS and not flags & 1:
                    try: s.sendall(frame(SETTINGS, 1, 0))
                    except OSError: return "closed"
                elif t == GOAWAY:
                    return "goaway:" + CODES.get(struct.unpack(">I", p[4:8])[0], str(struct.unpack(">I", p[4:8])[0]))
                elif t == RST and (sid_of_interest is None or sid == sid_of_interest):
                    return "rst:" + CODES.get(struct.unpack(">I", p[:4])[0], "?")
                elif t == HEADERS and not ignore_headers and (sid_of_interest is None or sid == sid_of_interest):
                    from hpack import Decoder
                    try:
                        return "response:" + dict(Decoder().decode(p)).get(":status", "?")
                    except Exception:
                        return "response:?"
        return "silent"
    def case(name, send, **kw):
        try:
            s = connect()
            send(s)
            print(name, outcome(s, **kw))
        except OSError as e:
            print(name, "closed")
        sys.stdout.flush()

    # A good request first and last: the proxy serves, and still serves after the abuse.
    case("good_before", lambda s: s.sendall(frame(HEADERS, 0x5, 1, hdrs())), sid_of_interest=1)
    # §4.2 frame size: a DATA frame larger than SETTINGS_MAX_FRAME_SIZE (16384).
    case("oversized_frame", lambda s: s.sendall(frame(HEADERS, 0x4, 1, hdrs()) + frame(DATA, 0, 1, b"x" * 20000)))
    # RFC 7541: a header block that does not decode (index 70 does not exist; 0xff 0xff... runs off).
    case("hpack_garbage", lambda s: s.sendall(frame(HEADERS, 0x5, 1, b"\xbf\xff\xff\xff\xff\x0f")))
    # §6.10 CONTINUATION flood: a header block that never ends.
    def continuation_flood(s):
        first = hdrs()
        s.sendall(frame(HEADERS, 0x0, 1, first))
        for i in range(2000):
            s.sendall(frame(CONT, 0, 1, Encoder().encode([("x-pad-%d" % i, "a" * 100)])))
    case("continuation_flood", continuation_flood)
    # §6.10: a CONTINUATION for another stream in the middle of a header block.
    case("interleaved_continuation", lambda s: s.sendall(frame(HEADERS, 0x0, 1, hdrs()) + frame(CONT, 0x4, 3, b"")))
    # §5.1 stream states: DATA on a stream that was never opened.
    case("data_on_idle_stream", lambda s: s.sendall(frame(DATA, 0, 5, b"hello")))
    # §5.1.1 stream IDs: a client stream with an even ID.
    case("even_stream_id", lambda s: s.sendall(frame(HEADERS, 0x5, 2, hdrs())))
    # §6.9 flow control: a WINDOW_UPDATE that overflows the connection window past 2^31-1.
    case("window_overflow", lambda s: s.sendall(frame(WINDOW, 0, 0, struct.pack(">I", 0x7fffffff))))
    # §6.9: more DATA than the stream window allows (the proxy's initial window: 65535 octets by default).
    def flow_overrun(s):
        s.sendall(frame(HEADERS, 0x4, 1, Encoder().encode(request("/upload", "POST"))))
        # (tunnel: to a server that accepts and never reads, past the 4 MiB window and the
        # socket buffers behind it)
        for _ in range(70 if not TUNNEL else 1000):
            s.sendall(frame(DATA, 0, 1, b"y" * 16384))
    # (tunnel: the CONNECT's 200 comes first; what counts is how the overrun ends)
    case("flow_control_overrun", flow_overrun, ignore_headers=TUNNEL)
    # §6.5.2 SETTINGS: ENABLE_PUSH must be 0 or 1; INITIAL_WINDOW_SIZE at most 2^31-1.
    case("settings_bad_push", lambda s: s.sendall(frame(SETTINGS, 0, 0, struct.pack(">HI", 2, 2))))
    case("settings_bad_window", lambda s: s.sendall(frame(SETTINGS, 0, 0, struct.pack(">HI", 4, 0x80000000))))
    # §6.5: a SETTINGS frame whose length is not a multiple of 6.
    case("settings_bad_length", lambda s: s.sendall(frame(SETTINGS, 0, 0, b"\x00\x04\x00")))
    # §6.7 PING with a wrong length.
    case("ping_bad_length", lambda s: s.sendall(frame(PING, 0, 0, b"1234567")))
    # §8.2.2 connection-specific header fields are malformed in HTTP/2.
    case("connection_header", lambda s: s.sendall(frame(HEADERS, 0x5, 1, hdrs(extra=[("connection", "keep-alive")]))), sid_of_interest=1)
    # §8.3.1 a request without :path.
    if not TUNNEL:  # CONNECT has no :path
        case("missing_path", lambda s: s.sendall(frame(HEADERS, 0x5, 1, Encoder().encode([(":method", "GET"), (":scheme", "http"), (":authority", "files")]))), sid_of_interest=1)
    # CVE-2023-44487 rapid reset: open and cancel streams as fast as possible.
    def rapid_reset(s):
        e = Encoder(); out = b""
        for i in range(0, 4000):
            sid = 1 + 2 * i
            out += frame(HEADERS, 0x5, sid, e.encode(request("/hello.txt")))
            out += frame(RST, 0, sid, struct.pack(">I", 8))
            if len(out) > 60000:
                s.sendall(out); out = b""
        s.sendall(out)
    case("rapid_reset", rapid_reset, limit=8.0)
    # §5.1.2: more concurrent streams than SETTINGS_MAX_CONCURRENT_STREAMS (100): the extra one is refused.
    LIMIT = 1000 if TUNNEL else 100
    def too_many_streams(s):
        e = Encoder(); out = b""
        for i in range(LIMIT + 1):
            out += frame(HEADERS, 0x4, 1 + 2 * i, e.encode(request("/hold", "POST")))
        s.sendall(out)
    case("too_many_streams", too_many_streams, sid_of_interest=1 + 2 * LIMIT)
    # §6.8 GOAWAY from the client: the proxy closes the connection.
    case("client_goaway", lambda s: s.sendall(frame(GOAWAY, 0, 0, struct.pack(">II", 0, 0))), limit=5.0)
    # Hanging up with streams open, twice: 2 x 100 request streams that never end, each
    # forwarded upstream; the proxy must reset them upstream when the client goes, or the
    # upstream's stream budget (100 here) is pinned and the next request waits forever.
    def hang_up_with_open_streams(s):
        e = Encoder(); out = b""
        for i in range(100):
            out += frame(HEADERS, 0x4, 1 + 2 * i, e.encode(request("/hold", "POST")))
        s.sendall(out); time.sleep(0.5); s.close()
        raise OSError("hung up")
    case("hang_up_1", hang_up_with_open_streams)
    case("hang_up_2", hang_up_with_open_streams)
    time.sleep(1)
    case("good_after", lambda s: s.sendall(frame(HEADERS, 0x5, 1, hdrs())), sid_of_interest=1)
    """#

    /// An HTTP/2 upstream that misbehaves, chosen by the request path: raw frames after the
    /// client's preface and first HEADERS (stream 1... of each connection), or a proper 200.
    static let hostileServer = #"""
    import socket, struct, threading
    from hpack import Encoder, Decoder
    DATA, HEADERS, RST, SETTINGS, GOAWAY, WINDOW = 0, 1, 3, 4, 7, 8
    def frame(t, flags, sid, payload=b""):
        return struct.pack(">I", len(payload))[1:] + bytes([t, flags]) + struct.pack(">I", sid) + payload
    def serve(c):
        buf = b""; enc = Encoder(); dec = Decoder()
        c.sendall(frame(SETTINGS, 0, 0))
        try:
            while True:
                d = c.recv(65536)
                if not d: return
                buf += d
                if buf.startswith(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"): buf = buf[24:]
                while len(buf) >= 9:
                    n = struct.unpack(">I", b"\0" + buf[:3])[0]
                    if len(buf) < 9 + n: break
                    t, flags, sid = buf[3], buf[4], struct.unpack(">I", buf[5:9])[0] & 0x7fffffff
                    p = buf[9:9 + n]; buf = buf[9 + n:]
                    if t == SETTINGS and not flags & 1: c.sendall(frame(SETTINGS, 1, 0))
                    if t != HEADERS: continue
                    path = dict(dec.decode(p)).get(":path", "/")
                    ok = enc.encode([(":status", "200"), ("content-length", "3")])
                    if path == "/oversized": c.sendall(frame(DATA, 0, sid, b"x" * 20000))
                    elif path == "/hpack": c.sendall(frame(HEADERS, 5, sid, b"\xbf\xff\xff\xff\xff\x0f"))
                    elif path == "/window": c.sendall(frame(WINDOW, 0, 0, struct.pack(">I", 0x7fffffff)))
                    elif path == "/reset": c.sendall(frame(RST, 0, sid, struct.pack(">I", 2)))
                    elif path == "/goaway": c.sendall(frame(GOAWAY, 0, 0, struct.pack(">II", 0, 2)))
                    elif path == "/wrong-stream": c.sendall(frame(HEADERS, 5, sid + 2, ok))
                    elif path == "/empty-status": c.sendall(frame(HEADERS, 5, sid, enc.encode([(":status", "")])))
                    elif path == "/text-status": c.sendall(frame(HEADERS, 5, sid, enc.encode([(":status", "ok!")])))
                    elif path == "/silence-then-close": c.close(); return
                    else: c.sendall(frame(HEADERS, 4, sid, ok) + frame(DATA, 1, sid, b"ok\n"))
        except OSError:
            pass
    t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); t.bind(("0.0.0.0", 8080)); t.listen(64)
    while True:
        c, _ = t.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
    """#

    /// The proxy's HTTP/2 client side against a hostile upstream: every protocol violation
    /// ends that upstream connection and the request gets a 5xx from the mesh; nothing
    /// crashes (`:status: ""` used to crash the agent inside swift-nio-http2), and a proper
    /// request afterwards gets 200 over a new connection.
    func testAHostileHTTP2UpstreamGetsTheClientAnErrorNotAHang() throws {
        try Self.hostileServer.write(toFile: mesh.dir + "/hostile.py", atomically: true, encoding: .utf8)
        chmod(mesh.dir + "/hostile.py", 0o644)
        _ = try mesh.startWeft(["run", "--name", mesh.name("bad"), "--service", "bad", "--port", "8080/http2", "--",
                                "/usr/bin/python3", mesh.dir + "/hostile.py"])
        try mesh.waitForListener(netns: mesh.name("bad"), port: 8080)
        let paths = ["/ok", "/oversized", "/hpack", "/window", "/reset", "/goaway", "/wrong-stream", "/empty-status", "/text-status", "/silence-then-close", "/ok"]
        let script = paths.map { "curl -s -o /dev/null -m 8 --http2-prior-knowledge -w '\($0) %{http_code}\\n' http://bad:8080\($0)" }.joined(separator: "; ")
        let r = mesh.weft(["run", "--name", mesh.name("cli"), "--service", "client", "--", "sh", "-c", script], timeout: 120)
        var codes: [String] = []
        for line in r.stdout.split(separator: "\n") { codes.append(String(line)) }
        XCTAssertEqual(codes.count, paths.count, r.output)
        XCTAssertEqual(codes.first, "/ok 200", r.output)
        XCTAssertEqual(codes.last, "/ok 200", "served after every violation: \(r.output)")
        for line in codes.dropFirst().dropLast() {
            let code = Int(line.split(separator: " ").last ?? "") ?? 0
            XCTAssertTrue((500...599).contains(code), "\(line): the mesh answers 5xx, never hangs (000) nor passes it off as success")
        }
        print("hostile HTTP/2 upstream: \(codes.joined(separator: ", "))")
    }

    func testHTTP2FromAppsFollowsTheRFCWhereSafetyIsAtStake() throws {
        try FileManager.default.createDirectory(atPath: mesh.dir + "/www", withIntermediateDirectories: true)
        try "served over h2\n".write(toFile: mesh.dir + "/www/hello.txt", atomically: true, encoding: .utf8)
        chmod(mesh.dir, 0o755)
        chmod(mesh.dir + "/www", 0o755)
        chmod(mesh.dir + "/www/hello.txt", 0o644)
        try Self.cases.write(toFile: mesh.dir + "/h2cases.py", atomically: true, encoding: .utf8)
        chmod(mesh.dir + "/h2cases.py", 0o644)
        // nghttpd, and on 9000 a TCP server that accepts and never reads (tunnel flow control).
        try "import socket, time\nt = socket.socket(); t.bind(('0.0.0.0', 9000)); t.listen(8)\nkeep = []\nwhile True: keep.append(t.accept())\n"
            .write(toFile: mesh.dir + "/sink.py", atomically: true, encoding: .utf8)
        chmod(mesh.dir + "/sink.py", 0o644)
        _ = try mesh.startWeft(["run", "--name", mesh.name("files"), "--service", "files", "--port", "8080/http2", "--port", "9000/tcp",
                                "--", "sh", "-c", "/usr/bin/python3 \(mesh.dir)/sink.py & exec \(HostTool.find("nghttpd")!) --no-tls -d \(mesh.dir)/www 8080"])
        try mesh.waitForListener(netns: mesh.name("files"), port: 8080)
        let client = mesh.name("cli")
        _ = try mesh.startWeft(["run", "--name", client, "--service", "client", "--", "sleep", "300"])
        try mesh.waitUntil("client attached", timeout: 20) { try self.mesh.workload(client) != nil }
        let agentPid = try XCTUnwrap(mesh.agent?.processIdentifier)

        let r = mesh.run(["ip", "netns", "exec", client, "/usr/bin/python3", mesh.dir + "/h2cases.py", "files", "8080"], timeout: 180)
        XCTAssertEqual(r.status, 0, r.output)
        var got: [String: String] = [:]
        for line in r.stdout.split(separator: "\n") {
            let f = line.split(separator: " ", maxSplits: 1).map(String.init)
            if f.count == 2 { got[f[0]] = f[1] }
        }
        let expected: [String: Set<String>] = [
            "good_before": ["response:200"],
            "oversized_frame": ["goaway:FRAME_SIZE_ERROR"],
            "hpack_garbage": ["goaway:COMPRESSION_ERROR"],
            "continuation_flood": ["goaway:ENHANCE_YOUR_CALM", "goaway:PROTOCOL_ERROR", "closed"],
            "interleaved_continuation": ["goaway:PROTOCOL_ERROR"],
            "data_on_idle_stream": ["goaway:PROTOCOL_ERROR"],
            "even_stream_id": ["goaway:PROTOCOL_ERROR"],
            "window_overflow": ["goaway:FLOW_CONTROL_ERROR"],
            "flow_control_overrun": ["goaway:FLOW_CONTROL_ERROR", "rst:FLOW_CONTROL_ERROR"],
            "settings_bad_push": ["goaway:PROTOCOL_ERROR"],
            "settings_bad_window": ["goaway:FLOW_CONTROL_ERROR"],
            "settings_bad_length": ["goaway:FRAME_SIZE_ERROR"],
            "ping_bad_length": ["goaway:FRAME_SIZE_ERROR"],
            "connection_header": ["rst:PROTOCOL_ERROR", "goaway:PROTOCOL_ERROR"],
            "missing_path": ["rst:PROTOCOL_ERROR", "goaway:PROTOCOL_ERROR"],
            "rapid_reset": ["goaway:ENHANCE_YOUR_CALM"],
            "too_many_streams": ["rst:REFUSED_STREAM", "rst:PROTOCOL_ERROR", "goaway:PROTOCOL_ERROR"],
            "client_goaway": ["closed", "goaway:NO_ERROR"],
            "hang_up_1": ["closed"],
            "hang_up_2": ["closed"],
            "good_after": ["response:200"],
        ]
        for (name, allowed) in expected.sorted(by: { $0.key < $1.key }) {
            XCTAssertTrue(got[name].map(allowed.contains) ?? false, "\(name): got \(got[name] ?? "nothing"), expected one of \(allowed.sorted())")
        }
        XCTAssertEqual(kill(agentPid, 0), 0, "the agent survived every case")

        // The network side: the same cases on the mesh tunnel (15008) of the server workload,
        // over mTLS with a certificate of the mesh's CA, every stream a CONNECT to nghttpd.
        try MTLSTests.mintScript.write(toFile: mesh.dir + "/mint.py", atomically: true, encoding: .utf8)
        let minted = mesh.run(["/usr/bin/python3", mesh.dir + "/mint.py", mesh.dir + "/state/ca", "spiffe://weft.local/ns/default/sa/prober",
                               "-60", "3600", mesh.dir + "/prober"])
        XCTAssertEqual(minted.status, 0, minted.output)
        let ip = try XCTUnwrap(try mesh.workload(mesh.name("files"))?.spec.podIP).description
        let t = mesh.run(["/usr/bin/python3", mesh.dir + "/h2cases.py", ip, "15008", mesh.dir + "/prober.pem", mesh.dir + "/prober.key", "\(ip):8080", "\(ip):9000"],
                         timeout: 240)
        XCTAssertEqual(t.status, 0, t.output)
        var tunnel: [String: String] = [:]
        for line in t.stdout.split(separator: "\n") {
            let f = line.split(separator: " ", maxSplits: 1).map(String.init)
            if f.count == 2 { tunnel[f[0]] = f[1] }
        }
        for (name, allowed) in expected.sorted(by: { $0.key < $1.key }) where name != "missing_path" {
            XCTAssertTrue(tunnel[name].map(allowed.contains) ?? false, "tunnel \(name): got \(tunnel[name] ?? "nothing"), expected one of \(allowed.sorted())")
        }
        XCTAssertEqual(kill(agentPid, 0), 0, "the agent survived the tunnel cases")
        print("HTTP/2 conformance, tunnel:", tunnel.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " "))
        print("HTTP/2 conformance:", got.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " "))
    }
}
