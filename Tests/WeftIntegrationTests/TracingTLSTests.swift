import Foundation
import XCTest

/// Spans exported over TLS: to a collector that requires a client certificate (mTLS), with
/// its certificate verified against `--tracing-collector-ca`; a collector whose certificate
/// does not chain to that CA gets nothing; bad flags are refused before the agent starts.
final class TracingTLSTests: XCTestCase {
    var mesh: MeshHarness?
    var receiver: Process?
    let dir = NSTemporaryDirectory() + "weft-otlp-tls-\(UUID().uuidString.prefix(8))"

    override func setUpWithError() throws {
        guard FileManager.default.fileExists(atPath: "/usr/lib/python3/dist-packages/grpc") else {
            throw XCTSkip("SKIPPED: python3-grpcio is not installed; run scripts/setup-deps")
        }
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        // Two CAs; the collector's certificate (for 127.0.0.1) and the agent's client
        // certificate are both from the first.
        let script = """
        set -e
        cd '\(dir)'
        for ca in ca other; do
          openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout $ca.key -out $ca.pem -days 1 -subj /CN=$ca 2>/dev/null
        done
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout server.key -out server.csr -subj /CN=collector 2>/dev/null
        printf 'subjectAltName=IP:127.0.0.1\\nextendedKeyUsage=serverAuth\\n' > server.ext
        openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 -extfile server.ext -out server.pem 2>/dev/null
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout client.key -out client.csr -subj /CN=weft-agent 2>/dev/null
        printf 'extendedKeyUsage=clientAuth\\n' > client.ext
        openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 -extfile client.ext -out client.pem 2>/dev/null
        chmod 600 client.key
        """
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/sh")
        p.arguments = ["-c", script]
        try p.run()
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 0, "certificates made with openssl")
    }

    override func tearDown() {
        mesh?.shutdown()
        if let mesh { XCTAssertEqual(mesh.ourNetns(), [], "teardown must leave no netns") }
        receiver?.terminate()
        receiver?.waitUntilExit()
        try? FileManager.default.removeItem(atPath: dir)
    }

    /// A client → server request through the mesh with tracing at 100%; returns the mesh.
    func tracedRequest(agentArgs: [String]) throws -> MeshHarness {
        let mesh = try MeshHarness.start(agentArgs: agentArgs + ["--trace-sampling", "100"])
        self.mesh = mesh
        try ControlPlaneTests.app.write(toFile: mesh.dir + "/back.py", atomically: true, encoding: .utf8)
        _ = try mesh.startWeft(["run", "--name", mesh.name("back"), "--service", "back", "--port", "80:8000/http", "--",
                                "/usr/bin/python3", mesh.dir + "/back.py", "8000"])
        try mesh.waitForListener(netns: mesh.name("back"), port: 8000)
        let r = mesh.weft(["run", "--name", mesh.name("cli"), "--service", "client", "--", "curl", "-sS", "-m", "10", "http://back/"], timeout: 60)
        XCTAssertEqual(r.status, 0, r.output)
        return mesh
    }

    func testSpansReachACollectorThatRequiresMutualTLS() throws {
        let spans = dir + "/spans.jsonl"
        let (process, port) = try TracingTests.startReceiver(spansFile: spans, tls: [dir + "/server.pem", dir + "/server.key", dir + "/ca.pem"])
        receiver = process
        let mesh = try tracedRequest(agentArgs: ["--tracing-collector", "127.0.0.1:\(port)", "--tracing-collector-ca", dir + "/ca.pem",
                                                 "--tracing-collector-cert", dir + "/client.pem", "--tracing-collector-key", dir + "/client.key"])
        do {
            try mesh.waitUntil("the client and server spans at the TLS collector", timeout: 15) {
                TracingTests.spans(in: spans).count >= 2
            }
        } catch {
            XCTFail("\(error); the agent on tracing: \(mesh.agentLog.split(separator: "\n").filter { $0.contains("tracing") }) \(mesh.agentLog.suffix(1500))")
            return
        }
        let kinds = Set(TracingTests.spans(in: spans).compactMap { $0["kind"] as? Int })
        XCTAssertEqual(kinds, [2, 3])
        XCTAssertTrue(mesh.agentLog.contains("(TLS) at 100"), "the agent says the export is over TLS")
    }

    func testACollectorWhoseCertificateDoesNotChainToTheCAGetsNothing() throws {
        let spans = dir + "/spans.jsonl"
        let (process, port) = try TracingTests.startReceiver(spansFile: spans, tls: [dir + "/server.pem", dir + "/server.key"])
        receiver = process
        let mesh = try tracedRequest(agentArgs: ["--tracing-collector", "127.0.0.1:\(port)", "--tracing-collector-ca", dir + "/other.pem"])
        try mesh.waitUntil("the agent reports the failed export", timeout: 15) {
            mesh.agentLog.contains("tracing: cannot export spans to 127.0.0.1:\(port)")
        }
        XCTAssertEqual(TracingTests.spans(in: spans).count, 0, "no span may reach an unverified collector")
        // Refused by certificate verification, not for any other reason.
        let line = mesh.agentLog.split(separator: "\n").first { $0.contains("cannot export spans") } ?? ""
        XCTAssertTrue(line.contains("CERTIFICATE_VERIFY_FAILED"), String(line))
    }

    func testBadCollectorTLSFlagsAreRefusedBeforeStart() throws {
        chmod(dir + "/client.key", 0o644)
        let cases: [([String], String)] = [
            (["--tracing-collector-ca", dir + "/ca.pem"], "need --tracing-collector HOST:PORT"),
            (["--tracing-collector", "127.0.0.1:4317", "--tracing-collector-cert", dir + "/client.pem"], "go together"),
            (["--tracing-collector", "127.0.0.1:4317", "--tracing-collector-ca", dir + "/missing.pem"], "missing.pem: not a readable PEM certificate"),
            (["--tracing-collector", "127.0.0.1:4317", "--tracing-collector-ca", dir + "/ca.key"], "ca.key: not a readable PEM certificate"),
            (["--tracing-collector", "127.0.0.1:4317", "--tracing-collector-cert", dir + "/client.pem", "--tracing-collector-key", dir + "/client.key"],
             "readable by others (mode 644)"),
        ]
        for (args, message) in cases {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: MeshHarness.weftBinary)
            p.arguments = ["agent", "--socket", dir + "/never.sock"] + args
            let err = Pipe()
            p.standardError = err
            p.standardOutput = FileHandle.nullDevice
            try p.run()
            let text = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            p.waitUntilExit()
            XCTAssertNotEqual(p.terminationStatus, 0, "\(args)")
            XCTAssertTrue(text.contains(message), "\(args): \(text)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/never.sock"), "nothing started")
    }
}
