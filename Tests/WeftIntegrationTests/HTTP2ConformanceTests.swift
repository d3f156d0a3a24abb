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
    import socket, struct, sys, time
    from hpack import Encoder
    host, port = sys.argv[1], int(sys.argv[2])
    PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    DATA, HEADERS, PRIORITY, RST, SETTINGS, PING, GOAWAY, WINDOW, CONT = 0, 1, 2, 3, 4, 6, 7, 8, 9
    CODES = {0: "NO_ERROR", 1: "PROTOCOL_ERROR", 2: "INTERNAL_ERROR", 3: "FLOW_CONTROL_ERROR", 5: "STREAM_CLOSED",
             6: "FRAME_SIZE_ERROR", 7: "REFUSED_STREAM", 8: "CANCEL", 9: "COMPRESSION_ERROR", 11: "ENHANCE_YOUR_CALM"}
    def frame(t, flags, sid, payload=b""):
        return struct.pack(">I", len(payload))[1:] + bytes([t, flags]) + struct.pack(">I", sid) + payload
    def hdrs(path="/hello.txt", extra=()):
        return Encoder().encode([(":method", "GET"), (":scheme", "http"), (":authority", "files:8080"), (":path", path)] + list(extra))
    def connect():
        s = socket.create_connection((host, port), timeout=5)
        s.sendall(PREFACE + frame(SETTINGS, 0, 0))
        return s
    def outcome(s, limit=5.0, sid_of_interest=None):
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
                elif t == HEADERS and (sid_of_interest is None or sid == sid_of_interest):
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
        s.sendall(frame(HEADERS, 0x4, 1, Encoder().encode([(":method", "POST"), (":scheme", "http"), (":authority", "files:8080"), (":path", "/upload")])))
        for _ in range(70):
            s.sendall(frame(DATA, 0, 1, b"y" * 16384))
    case("flow_control_overrun", flow_overrun)
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
    case("missing_path", lambda s: s.sendall(frame(HEADERS, 0x5, 1, Encoder().encode([(":method", "GET"), (":scheme", "http"), (":authority", "files")]))), sid_of_interest=1)
    # CVE-2023-44487 rapid reset: open and cancel streams as fast as possible.
    def rapid_reset(s):
        e = Encoder(); out = b""
        for i in range(0, 4000):
            sid = 1 + 2 * i
            out += frame(HEADERS, 0x5, sid, e.encode([(":method", "GET"), (":scheme", "http"), (":authority", "files:8080"), (":path", "/hello.txt")]))
            out += frame(RST, 0, sid, struct.pack(">I", 8))
            if len(out) > 60000:
                s.sendall(out); out = b""
        s.sendall(out)
    case("rapid_reset", rapid_reset, limit=8.0)
    # §5.1.2: more concurrent streams than SETTINGS_MAX_CONCURRENT_STREAMS (100): the extra one is refused.
    def too_many_streams(s):
        e = Encoder(); out = b""
        for i in range(101):
            out += frame(HEADERS, 0x4, 1 + 2 * i, e.encode([(":method", "POST"), (":scheme", "http"), (":authority", "files:8080"), (":path", "/hold")]))
        s.sendall(out)
    case("too_many_streams", too_many_streams, sid_of_interest=201)
    # §6.8 GOAWAY from the client: the proxy closes the connection.
    case("client_goaway", lambda s: s.sendall(frame(GOAWAY, 0, 0, struct.pack(">II", 0, 0))), limit=5.0)
    # Hanging up with streams open, twice: 2 x 100 request streams that never end, each
    # forwarded upstream; the proxy must reset them upstream when the client goes, or the
    # upstream's stream budget (100 here) is pinned and the next request waits forever.
    def hang_up_with_open_streams(s):
        e = Encoder(); out = b""
        for i in range(100):
            out += frame(HEADERS, 0x4, 1 + 2 * i, e.encode([(":method", "POST"), (":scheme", "http"), (":authority", "files:8080"), (":path", "/hold")]))
        s.sendall(out); time.sleep(0.5); s.close()
        raise OSError("hung up")
    case("hang_up_1", hang_up_with_open_streams)
    case("hang_up_2", hang_up_with_open_streams)
    time.sleep(1)
    case("good_after", lambda s: s.sendall(frame(HEADERS, 0x5, 1, hdrs())), sid_of_interest=1)
    """#

    func testHTTP2FromAppsFollowsTheRFCWhereSafetyIsAtStake() throws {
        try FileManager.default.createDirectory(atPath: mesh.dir + "/www", withIntermediateDirectories: true)
        try "served over h2\n".write(toFile: mesh.dir + "/www/hello.txt", atomically: true, encoding: .utf8)
        chmod(mesh.dir, 0o755)
        chmod(mesh.dir + "/www", 0o755)
        chmod(mesh.dir + "/www/hello.txt", 0o644)
        try Self.cases.write(toFile: mesh.dir + "/h2cases.py", atomically: true, encoding: .utf8)
        chmod(mesh.dir + "/h2cases.py", 0o644)
        _ = try mesh.startWeft(["run", "--name", mesh.name("files"), "--service", "files", "--port", "8080/http2",
                                "--", HostTool.find("nghttpd")!, "--no-tls", "-d", mesh.dir + "/www", "8080"])
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
        print("HTTP/2 conformance:", got.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " "))
    }
}
