import Foundation
import WeftCore
import XCTest

/// Identity and the mesh tunnel through real namespaces: every workload has a SPIFFE
/// certificate from the agent's CA; traffic between meshed workloads crosses the bridge
/// only as TLS 1.3 on port 15008; peers without a mesh certificate are refused.
final class MTLSTests: XCTestCase {
    var mesh: MeshHarness!

    override func setUpWithError() throws { mesh = try MeshHarness.start() }
    override func tearDown() {
        mesh?.shutdown()
        if let mesh { XCTAssertEqual(mesh.ourNetns(), [], "teardown must leave no netns") }
    }

    func startServer(_ name: String = "srv", service: String = "web", account: String? = nil) throws -> MeshHarness.Background {
        let root = mesh.dir + "/www-" + name
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o755])
        FileManager.default.createFile(atPath: root + "/id.txt", contents: Data("\(name)\n".utf8), attributes: [.posixPermissions: 0o644])
        var args = ["run", "--name", mesh.name(name), "--service", service, "--namespace", "shop",
                    "--port", "80:3000/http", "--port", "90:3000/tcp", "--label", "app=\(service)"]
        if let account { args += ["--service-account", account] }
        let bg = try mesh.startWeft(args + ["--", "/usr/bin/python3", "-m", "http.server", "3000", "--bind", "0.0.0.0", "--directory", root])
        try mesh.waitForListener(netns: mesh.name(name), port: 3000)
        return bg
    }

    struct CertsReply: Decodable {
        struct Cert: Decodable { let workload: String; let identity: String; let serial: String; let chainPEM: [String]; let issued: Int }
        let trustDomain: String
        let bundlePEM: String
        let workloads: [Cert]
    }

    func certs() throws -> CertsReply {
        let r = mesh.weft(["get", "certs", "-o", "json"])
        XCTAssertEqual(r.status, 0, r.output)
        let decoder = JSONDecoder()
        return try decoder.decode(CertsReply.self, from: Data(r.stdout.utf8))
    }

    func testWorkloadsTalkOnlyTLS13OnTheTunnelAndHoldVerifiableSVIDs() throws {
        guard let tshark = HostTool.find("tshark") else { throw XCTSkip("SKIPPED: tshark is not installed; run scripts/setup-deps") }
        _ = try startServer()
        let vip = try XCTUnwrap(try mesh.service("web")).vip
        // Everything that crosses the bridge while a meshed client calls the service.
        let pcap = mesh.dir + "/bridge.pcap"
        FileManager.default.createFile(atPath: pcap, contents: nil, attributes: [.posixPermissions: 0o666])
        let capture = try mesh.startProcess([tshark, "-i", mesh.bridge, "-w", pcap, "-q"])
        try mesh.waitUntil("tshark capturing", timeout: 15) {
            capture.stderr.contains("Capturing on") || (try? FileManager.default.attributesOfItem(atPath: pcap)[.size] as? Int ?? 0) ?? 0 > 0
        }
        let calls = mesh.weft(["run", "--name", mesh.name("cli"), "--service", "client", "--namespace", "shop", "--", "sh", "-c",
                               "curl -sS -m 5 http://web:80/id.txt && curl -sS -m 5 http://\(vip):90/id.txt && curl -sS -m 5 http://\(vip):80/id.txt"],
                              timeout: 60)
        XCTAssertEqual(calls.status, 0, calls.output)
        XCTAssertEqual(calls.stdout, "srv\nsrv\nsrv\n", calls.output)
        usleep(500_000)
        kill(capture.process.processIdentifier, SIGINT)
        _ = mesh.wait(capture, timeout: 10)

        // No plaintext HTTP on the wire, every TCP segment on the tunnel port, TLS 1.3 chosen.
        let plaintext = mesh.run([tshark, "-r", pcap, "-Y", "frame contains \"GET /\" || frame contains \"HTTP/1\""])
        XCTAssertEqual(plaintext.status, 0, plaintext.output)
        XCTAssertEqual(plaintext.stdout.trimmingCharacters(in: .whitespacesAndNewlines), "", "plaintext HTTP on the bridge:\n\(plaintext.stdout)")
        // (Bare RST/FIN segments of the client's connections may cross the bridge after its
        // workload is torn down; no segment with data may.)
        let other = mesh.run([tshark, "-r", pcap, "-Y", "tcp.len > 0 && !(tcp.port == 15008)"])
        XCTAssertEqual(other.stdout.trimmingCharacters(in: .whitespacesAndNewlines), "", "TCP data outside the tunnel:\n\(other.stdout)")
        let tunnel = mesh.run([tshark, "-r", pcap, "-Y", "tcp.port == 15008"])
        XCTAssertFalse(tunnel.stdout.isEmpty, "no tunnel traffic captured: \(capture.stderr)")
        let hello = mesh.run([tshark, "-r", pcap, "-d", "tcp.port==15008,tls", "-Y", "tls.handshake.type == 2",
                              "-T", "fields", "-e", "tls.handshake.extensions.supported_version"])
        let versions = Set(hello.stdout.split(whereSeparator: \.isNewline).map(String.init))
        XCTAssertEqual(versions, ["0x0304"], "ServerHello versions: \(hello.output)")

        // The server's counters agree: tunnel connections accepted, none refused.
        let server = try XCTUnwrap(try mesh.workload(mesh.name("srv")))
        XCTAssertGreaterThanOrEqual(server.counters.tunnelConnections, 1)
        XCTAssertEqual(server.counters.tunnelRefused, 0)

        // Certificates: one per workload, the SPIFFE ID in the URI SAN, accepted by openssl
        // against the bundle.
        let reply = try certs()
        XCTAssertEqual(reply.trustDomain, "weft.local")
        let srv = try XCTUnwrap(reply.workloads.first { $0.workload == mesh.name("srv") })
        XCTAssertEqual(srv.identity, "spiffe://weft.local/ns/shop/sa/web")
        try reply.bundlePEM.write(toFile: mesh.dir + "/bundle.pem", atomically: true, encoding: .utf8)
        try srv.chainPEM.joined(separator: "\n").write(toFile: mesh.dir + "/srv.pem", atomically: true, encoding: .utf8)
        let verify = mesh.run(["openssl", "verify", "-CAfile", mesh.dir + "/bundle.pem", mesh.dir + "/srv.pem"])
        XCTAssertEqual(verify.status, 0, verify.output)
        let san = mesh.run(["openssl", "x509", "-noout", "-ext", "subjectAltName", "-in", mesh.dir + "/srv.pem"])
        XCTAssertTrue(san.stdout.contains("URI:spiffe://weft.local/ns/shop/sa/web"), san.output)
        XCTAssertEqual(mesh.weft(["get", "certs", "--bundle"]).stdout, reply.bundlePEM)
        let table = mesh.weft(["get", "certs"]).stdout
        XCTAssertTrue(table.contains("IDENTITY") && table.contains(srv.serial), table)
        // The CA key is private.
        let attrs = try FileManager.default.attributesOfItem(atPath: mesh.dir + "/state/ca/root-key.pem")
        XCTAssertEqual((attrs[.posixPermissions] as? NSNumber)?.intValue, 0o600)
    }

    func testPeersWithoutAMeshCertificateAreRefusedOnTheTunnelPort() throws {
        _ = try startServer()
        let server = try XCTUnwrap(try mesh.workload(mesh.name("srv")))
        let ip = try XCTUnwrap(server.spec.podIP)
        // No client certificate: TLS 1.3 finishes the handshake on the client's side first,
        // so the refusal shows on the first read, as an alert.
        let bare = mesh.run(["sh", "-c", "printf 'GET /id.txt HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n' | timeout 10 openssl s_client -connect \(ip):15008 -tls1_3 -quiet 2>&1"])
        XCTAssertFalse(bare.output.contains("srv"), bare.output)
        XCTAssertTrue(bare.output.lowercased().contains("alert") || bare.output.contains("errno"), bare.output)
        // A self-signed certificate carrying a mesh identity.
        let key = mesh.dir + "/self.key", cert = mesh.dir + "/self.pem"
        let made = mesh.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", key,
                             "-out", cert, "-days", "1", "-subj", "/O=evil", "-addext", "subjectAltName=URI:spiffe://weft.local/ns/shop/sa/client"])
        XCTAssertEqual(made.status, 0, made.output)
        let forged = mesh.run(["sh", "-c", "printf 'GET /id.txt HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n' | timeout 10 openssl s_client -connect \(ip):15008 -tls1_3 -quiet -cert \(cert) -key \(key) 2>&1"])
        XCTAssertFalse(forged.output.contains("srv"), forged.output)
        // Plaintext on the tunnel port.
        let plain = mesh.run(["curl", "-sS", "-m", "5", "http://\(ip):15008/id.txt"])
        XCTAssertNotEqual(plain.status, 0, plain.output)
        XCTAssertFalse(plain.stdout.contains("srv"), plain.output)
        try mesh.waitUntil("three refusals counted", timeout: 10) {
            (try mesh.workload(mesh.name("srv")))?.counters.tunnelRefused ?? 0 >= 3
        }
        let log = mesh.agentLog
        XCTAssertTrue(log.contains("peer presented no certificate"), log)
        XCTAssertTrue(log.contains("peer certificate failed verification"), log)
        XCTAssertTrue(log.contains("not TLS") || log.contains("plaintext HTTP"), log)
        // Meshed callers are unaffected.
        let ok = mesh.weft(["run", "--name", mesh.name("cli"), "--service", "client", "--", "curl", "-sS", "-m", "5", "http://\(ip):3000/id.txt"])
        XCTAssertEqual(ok.stdout, "srv\n", ok.output)
    }
}

extension MTLSTests {
    func apply(_ yaml: String) throws {
        let file = mesh.dir + "/pa-\(UUID().uuidString.prefix(6)).yaml"
        try yaml.write(toFile: file, atomically: true, encoding: .utf8)
        let r = mesh.weft(["apply", "-f", file])
        XCTAssertEqual(r.status, 0, r.output)
    }

    /// STRICT refuses plaintext from outside the mesh (asserted on the read: the connection is
    /// accepted, then reset) while meshed callers keep working; PERMISSIVE accepts both;
    /// DISABLE on a port makes meshed callers use plaintext there.
    func testPeerAuthenticationStrictPermissiveAndDisable() throws {
        _ = try startServer()
        let server = try XCTUnwrap(try mesh.workload(mesh.name("srv")))
        let ip = try XCTUnwrap(server.spec.podIP)
        let meshed = { self.mesh.weft(["run", "--name", self.mesh.name("cli"), "--service", "client", "--", "curl", "-sS", "-m", "5", "http://\(ip):3000/id.txt"]) }
        let plain = { self.mesh.run(["curl", "-sS", "-m", "5", "http://\(ip):3000/id.txt"]) }

        // Default PERMISSIVE: both work; the plaintext one is counted as such.
        XCTAssertEqual(plain().stdout, "srv\n")
        XCTAssertEqual(meshed().stdout, "srv\n")
        XCTAssertEqual(try XCTUnwrap(try mesh.workload(mesh.name("srv"))).counters.plaintextInbound, 1)

        try apply("""
            apiVersion: security.istio.io/v1
            kind: PeerAuthentication
            metadata: {name: default, namespace: weft-system}
            spec:
              mtls: {mode: STRICT}
            """)
        let refused = plain()
        XCTAssertNotEqual(refused.status, 0, refused.output)
        XCTAssertFalse(refused.stdout.contains("srv"), refused.output)
        XCTAssertTrue(["reset", "Recv failure", "Empty reply", "Couldn't connect"].contains { refused.stderr.contains($0) }, refused.output)
        XCTAssertEqual(meshed().stdout, "srv\n", "meshed callers come through the tunnel under STRICT")
        XCTAssertGreaterThanOrEqual(try XCTUnwrap(try mesh.workload(mesh.name("srv"))).counters.plaintextRefused, 1)
        XCTAssertTrue(mesh.agentLog.contains("PeerAuthentication mode STRICT"), mesh.agentLog.suffix(2000).description)

        // A namespace policy overrides the mesh's: PERMISSIVE in shop.
        try apply("""
            apiVersion: security.istio.io/v1beta1
            kind: PeerAuthentication
            metadata: {name: shop-permissive, namespace: shop}
            spec:
              mtls: {mode: PERMISSIVE}
            """)
        XCTAssertEqual(plain().stdout, "srv\n")

        // DISABLE on port 3000 of this workload: meshed callers go plaintext (no new tunnel
        // connection), and plaintext is accepted.
        try apply("""
            apiVersion: security.istio.io/v1beta1
            kind: PeerAuthentication
            metadata: {name: web-3000, namespace: shop}
            spec:
              selector: {matchLabels: {app: web}}
              mtls: {mode: STRICT}
              portLevelMtls:
                3000: {mode: DISABLE}
            """)
        _ = mesh.weft(["get", "workloads"])
        let tunnelsBefore = try XCTUnwrap(try mesh.workload(mesh.name("srv"))).counters.tunnelConnections
        XCTAssertEqual(meshed().stdout, "srv\n")
        XCTAssertEqual(plain().stdout, "srv\n")
        XCTAssertEqual(try XCTUnwrap(try mesh.workload(mesh.name("srv"))).counters.tunnelConnections, tunnelsBefore)
    }
}

extension MTLSTests {
    /// AuthorizationPolicy: principals × paths × methods through the mesh, a TCP port, and a
    /// plaintext caller, each with the expected answer.
    func testAuthorizationPolicyMatrix() throws {
        _ = try startServer()
        let root = mesh.dir + "/www-srv"
        try FileManager.default.createDirectory(atPath: root + "/public", withIntermediateDirectories: true, attributes: [.posixPermissions: 0o755])
        FileManager.default.createFile(atPath: root + "/public/a.txt", contents: Data("pub\n".utf8), attributes: [.posixPermissions: 0o644])
        FileManager.default.createFile(atPath: root + "/private.txt", contents: Data("secret\n".utf8), attributes: [.posixPermissions: 0o644])
        try apply("""
            apiVersion: security.istio.io/v1
            kind: AuthorizationPolicy
            metadata: {name: deny-blocked, namespace: shop}
            spec:
              action: DENY
              rules:
              - from: [{source: {principals: ["*/sa/blocked"]}}]
            ---
            apiVersion: security.istio.io/v1
            kind: AuthorizationPolicy
            metadata: {name: readers, namespace: shop}
            spec:
              selector: {matchLabels: {app: web}}
              rules:
              - from: [{source: {namespaces: [shop]}}]
                to: [{operation: {methods: [GET], paths: ["/public/*"]}}]
              - from: [{source: {principals: [weft.local/ns/shop/sa/admin]}}]
                to: [{operation: {methods: [POST], paths: [/admin]}}]
                when: [{key: "request.headers[x-token]", values: ["t-*"]}]
            """)
        let ip = try XCTUnwrap(try mesh.workload(mesh.name("srv"))?.spec.podIP)
        func codes(_ account: String, namespace: String = "shop", _ script: String) -> String {
            let r = mesh.weft(["run", "--name", mesh.name("c-\(account)"), "--service", "client", "--namespace", namespace,
                               "--service-account", account, "--", "sh", "-c", script], timeout: 60)
            return r.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        let code = "curl -s -o /dev/null -m 5 -w '%{http_code} '"
        let url = "http://web.shop"
        XCTAssertEqual(codes("reader", "\(code) \(url)/public/a.txt; \(code) \(url)/private.txt; \(code) -X POST \(url)/public/a.txt"),
                       "200 403 403")
        // Allowed through to the app, which does not implement POST (501): not a 403.
        XCTAssertEqual(codes("admin", "\(code) -X POST -H 'x-token: t-1' \(url)/admin; \(code) -X POST \(url)/admin; \(code) \(url)/public/a.txt"),
                       "501 403 200")
        XCTAssertEqual(codes("blocked", "\(code) \(url)/public/a.txt"), "403", "DENY first")
        XCTAssertEqual(codes("reader", namespace: "other", "\(code) \(url)/public/a.txt"), "403", "namespace not allowed")
        let body = codes("reader", "curl -s -m 5 -D - \(url)/private.txt")
        XCTAssertTrue(body.contains("RBAC: access denied") && body.contains("x-weft-response-flags: RBAC"), body)
        // The /tcp port: no rule allows TCP here (the ALLOW rules need HTTP), so the
        // connection is refused and no byte of the app comes back.
        let tcp = codes("reader", "curl -sS -m 5 http://web.shop:90/public/a.txt; echo rc=$?")
        XCTAssertFalse(tcp.contains("pub"), tcp)
        // A plaintext caller has no identity: denied per request on the HTTP port.
        XCTAssertEqual(mesh.run(["curl", "-s", "-o", "/dev/null", "-m", "5", "-w", "%{http_code}", "http://\(ip):3000/public/a.txt"]).stdout, "403")
        let denied = try XCTUnwrap(try mesh.workload(mesh.name("srv"))).counters.authzDenied
        XCTAssertGreaterThanOrEqual(denied, 8)
        XCTAssertTrue(mesh.agentLog.contains("denied by AuthorizationPolicy shop/deny-blocked"), mesh.agentLog.suffix(3000).description)
    }

    /// gRPC (HTTP/2) is authorized call by call, like HTTP/1.1: on one connection, an allowed
    /// method succeeds and another is PERMISSION_DENIED (HTTP 403 on that stream only), and a
    /// plaintext caller's call is refused the same way.
    func testAuthorizationPolicyAppliesToEachGRPCCall() throws {
        try ProtocolTests.grpcServer.write(toFile: mesh.dir + "/grpc_server.py", atomically: true, encoding: .utf8)
        try #"""
        import sys, grpc
        ch = grpc.insecure_channel(sys.argv[1])
        for method in ["Say", "Count", "Say"]:
            try:
                call = ch.unary_unary if method == "Say" else ch.unary_stream
                r = call("/weft.Test/" + method)(b"2", timeout=10)
                print(method, "ok" if method == "Say" else ",".join(x.decode() for x in r))
            except grpc.RpcError as e:
                print(method, e.code().name)
        """#.write(toFile: mesh.dir + "/grpc_calls.py", atomically: true, encoding: .utf8)
        _ = try mesh.startWeft(["run", "--name", mesh.name("greeter"), "--service", "greeter", "--namespace", "shop",
                                "--port", "50051/grpc", "--label", "app=greeter", "--",
                                "/usr/bin/python3", mesh.dir + "/grpc_server.py", "50051", "a"])
        try mesh.waitForListener(netns: mesh.name("greeter"), port: 50051)
        try apply("""
            apiVersion: security.istio.io/v1
            kind: AuthorizationPolicy
            metadata: {name: say-only, namespace: shop}
            spec:
              selector: {matchLabels: {app: greeter}}
              rules:
              - to: [{operation: {paths: [/weft.Test/Say]}}]
            """)
        let r = mesh.weft(["run", "--name", mesh.name("gc"), "--service", "client", "--namespace", "shop", "--",
                           "/usr/bin/python3", mesh.dir + "/grpc_calls.py", "greeter.shop:50051"], timeout: 60)
        XCTAssertEqual(r.stdout.split(separator: "\n"), ["Say ok", "Count PERMISSION_DENIED", "Say ok"], r.output)
        let ip = try XCTUnwrap(try mesh.workload(mesh.name("greeter"))?.spec.podIP)
        let plain = mesh.run(["/usr/bin/python3", mesh.dir + "/grpc_calls.py", "\(ip):50051"])
        XCTAssertEqual(plain.stdout.split(separator: "\n"), ["Say ok", "Count PERMISSION_DENIED", "Say ok"], plain.output)
        XCTAssertTrue(mesh.agentLog.contains("POST /weft.Test/Count denied by AuthorizationPolicy shop/say-only"), mesh.agentLog.suffix(3000).description)
    }
}

extension MTLSTests {
    /// Mints a certificate with the mesh CA in DIR (root-cert.pem, root-key.pem) for URI,
    /// valid from START to END seconds from now: `mint.py DIR URI START END OUT` → OUT.pem, OUT.key.
    static let mintScript = """
    import sys, datetime
    from cryptography import x509
    from cryptography.x509.oid import NameOID, ExtendedKeyUsageOID
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    ca_dir, uri, start, end, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    ca_key = serialization.load_pem_private_key(open(ca_dir + "/root-key.pem", "rb").read(), None)
    ca = x509.load_pem_x509_certificate(open(ca_dir + "/root-cert.pem", "rb").read())
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.utcnow()
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "test")]))
        .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now + datetime.timedelta(seconds=start)).not_valid_after(now + datetime.timedelta(seconds=end))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256()))
    open(out + ".pem", "wb").write(cert.public_bytes(serialization.Encoding.PEM))
    open(out + ".key", "wb").write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    """

    /// Certificates signed by the mesh's own CA but wrong: expired, not yet valid, another
    /// trust domain. Each is refused with its reason; a right one is accepted.
    func testExpiredNotYetValidAndForeignTrustDomainCertificatesAreRefused() throws {
        _ = try startServer()
        let ip = try XCTUnwrap(try mesh.workload(mesh.name("srv"))?.spec.podIP)
        let mint = mesh.dir + "/mint.py"
        try Self.mintScript.write(toFile: mint, atomically: true, encoding: .utf8)
        let ca = mesh.dir + "/state/ca"
        let good = "spiffe://weft.local/ns/shop/sa/client"
        let cases: [(String, String, Int, Int)] = [
            ("expired", good, -7200, -3600), ("future", good, 3600, 7200), ("foreign", "spiffe://evil.example/ns/shop/sa/client", -60, 3600),
            ("valid", good, -60, 3600),
        ]
        for (name, uri, start, end) in cases {
            let made = mesh.run(["/usr/bin/python3", mint, ca, uri, "\(start)", "\(end)", mesh.dir + "/" + name])
            XCTAssertEqual(made.status, 0, made.output)
        }
        let before = try XCTUnwrap(try mesh.workload(mesh.name("srv"))).counters.tunnelRefused
        func connect(_ name: String, seconds: Int = 10) -> String {
            mesh.run(["sh", "-c", "printf 'PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n' | timeout \(seconds) openssl s_client -connect \(ip):15008 -tls1_3 -quiet -cert \(mesh.dir)/\(name).pem -key \(mesh.dir)/\(name).key 2>&1"]).output
        }
        for name in ["expired", "future", "foreign"] { _ = connect(name) }
        try mesh.waitUntil("three refusals", timeout: 10) {
            ((try self.mesh.workload(self.mesh.name("srv")))?.counters.tunnelRefused ?? 0) >= before + 3
        }
        _ = connect("valid", seconds: 2)  // accepted: the server waits for HTTP/2, so the client times out
        usleep(300_000)
        XCTAssertEqual(try XCTUnwrap(try mesh.workload(mesh.name("srv"))).counters.tunnelRefused, before + 3, "a valid certificate is accepted")
        let log = mesh.agentLog
        XCTAssertTrue(log.contains("outside trust domain weft.local"), log.suffix(3000).description)
        XCTAssertGreaterThanOrEqual(log.components(separatedBy: "peer certificate failed verification").count - 1, 2, log.suffix(3000).description)
    }
}

extension MTLSTests {
    /// A PeerAuthentication change applies to the next request even on a client whose pool
    /// holds keep-alive connections made under the old mode.
    func testPooledPlaintextConnectionsAreNotReusedOnceMTLSApplies() throws {
        _ = try startServer()
        let vip = try XCTUnwrap(try mesh.service("web")).vip
        let disable = mesh.dir + "/disable.yaml"
        try """
            apiVersion: security.istio.io/v1
            kind: PeerAuthentication
            metadata: {name: off, namespace: weft-system}
            spec: {mtls: {mode: DISABLE}}
            """.write(toFile: disable, atomically: true, encoding: .utf8)
        XCTAssertEqual(mesh.weft(["apply", "-f", disable]).status, 0)
        _ = try mesh.startWeft(["run", "--name", mesh.name("cli"), "--service", "client", "--", "sleep", "60"])
        try mesh.waitUntil("client attached", timeout: 20) { try self.mesh.workload(self.mesh.name("cli")) != nil }
        let get = { self.mesh.run(["ip", "netns", "exec", self.mesh.name("cli"), "curl", "-sS", "-m", "5", "http://\(vip)/id.txt"]).stdout }
        XCTAssertEqual(get(), "srv\n")
        XCTAssertEqual(get(), "srv\n")
        var server = try XCTUnwrap(try mesh.workload(mesh.name("srv")))
        XCTAssertEqual(server.counters.tunnelConnections, 0)
        XCTAssertGreaterThanOrEqual(server.counters.plaintextInbound, 1)
        XCTAssertEqual(mesh.weft(["delete", "-f", disable]).status, 0)
        XCTAssertEqual(get(), "srv\n")
        server = try XCTUnwrap(try mesh.workload(mesh.name("srv")))
        XCTAssertEqual(server.counters.tunnelConnections, 1, "the request after the change went through the tunnel")
    }
}

extension MTLSTests {
    /// 100 connections to 15008 that never start TLS: past 64 unfinished handshakes the rest
    /// are reset at once, and a meshed caller's established tunnel keeps carrying requests.
    func testAHandshakeFloodIsCutOffAndEstablishedTunnelsCarryOn() throws {
        _ = try startServer()
        let ip = try XCTUnwrap(try mesh.workload(mesh.name("srv"))?.spec.podIP)
        let vip = try XCTUnwrap(try mesh.service("web")).vip
        _ = try mesh.startWeft(["run", "--name", mesh.name("cli"), "--service", "client", "--", "sleep", "60"])
        try mesh.waitUntil("client attached", timeout: 20) { try self.mesh.workload(self.mesh.name("cli")) != nil }
        let get = { self.mesh.run(["ip", "netns", "exec", self.mesh.name("cli"), "curl", "-sS", "-m", "5", "http://\(vip)/id.txt"]).stdout }
        XCTAssertEqual(get(), "srv\n", "the tunnel is up before the flood")
        let flood = try mesh.startProcess(["/usr/bin/python3", "-c", """
            import socket, time
            held, reset = [], 0
            for i in range(100):
                s = socket.create_connection(("\(ip)", 15008), timeout=5); held.append(s)
            time.sleep(1)
            for s in held:
                s.setblocking(False)
                try:
                    if s.recv(1) == b"": reset += 1
                except BlockingIOError: pass
                except ConnectionResetError: reset += 1
            print("reset", reset, flush=True)
            time.sleep(4)
            """])
        try mesh.waitUntil("flood measured", timeout: 20) { flood.stdout.contains("reset") }
        XCTAssertEqual(get(), "srv\n", "an established tunnel carries on during the flood")
        let reset = Int(flood.stdout.split(separator: " ").last?.trimmingCharacters(in: .whitespacesAndNewlines) ?? "") ?? -1
        XCTAssertEqual(reset, 36, "100 - 64 pending handshakes: \(flood.stdout) \(flood.stderr)")
        XCTAssertTrue(mesh.agentLog.contains("handshake flood"), mesh.agentLog.suffix(2000).description)
    }
}
