import Foundation
import WeftCore
import XCTest

/// Services and virtual IPs through real namespaces: replicas behind one VIP, endpoints
/// that come and go with their workloads, undeclared ports refused.
final class ServiceTests: XCTestCase {
    var mesh: MeshHarness!

    override func setUpWithError() throws { mesh = try MeshHarness.start() }
    override func tearDown() {
        mesh?.shutdown()
        if let mesh { XCTAssertEqual(mesh.ourNetns(), [], "teardown must leave no netns") }
    }

    func startReplica(_ name: String) throws -> MeshHarness.Background {
        let root = mesh.dir + "/www-" + name
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o755])
        FileManager.default.createFile(atPath: root + "/id.txt", contents: Data("\(name)\n".utf8), attributes: [.posixPermissions: 0o644])
        let bg = try mesh.startWeft(["run", "--name", mesh.name(name), "--service", "web", "--namespace", "shop",
                                     "--port", "80:3000/http", "--port", "90:3000/tcp", "--", "/usr/bin/python3", "-m", "http.server", "3000",
                                     "--bind", "0.0.0.0", "--directory", root])
        try mesh.waitForListener(netns: mesh.name(name), port: 3000)
        return bg
    }

    func services() throws -> [ServiceStatus] {
        let r = mesh.weft(["get", "services", "-o", "json"])
        XCTAssertEqual(r.status, 0, r.output)
        return try JSONDecoder().decode([ServiceStatus].self, from: Data(r.stdout.utf8))
    }

    func testReplicasBehindAVirtualIPComeAndGo() throws {
        _ = try startReplica("a")
        let b = try startReplica("b")
        let web = try XCTUnwrap(try services().first { $0.key.name.rawValue == "web" })
        XCTAssertEqual(web.key.namespace.rawValue, "shop")
        XCTAssertTrue(CIDR("240.240.0.0/16")!.contains(web.vip), "\(web.vip)")
        XCTAssertEqual(web.ports.map(\.description), ["80:3000/http", "90:3000/tcp"])
        XCTAssertEqual(Set(web.endpoints.map(\.workload)), [mesh.name("a"), mesh.name("b")])
        let yaml = mesh.weft(["get", "services", "-o", "yaml"]).stdout
        XCTAssertTrue(yaml.contains("vip: \(web.vip)") || yaml.contains("vip: '\(web.vip)'"), yaml)
        let table = mesh.weft(["get", "services"]).stdout
        XCTAssertTrue(table.contains("web") && table.contains("shop") && table.contains("\(web.vip)"), table)

        // Six connections to the VIP's L4 port (declared /tcp: never sniffed): round robin per connection over both
        // replicas, each reached on its target port 3000.
        let calls = mesh.weft(["run", "--name", mesh.name("cli"), "--service", "client", "--", "sh", "-c",
                               "for i in 1 2 3 4 5 6; do curl -sS -m 5 http://\(web.vip):90/id.txt; done"], timeout: 60)
        XCTAssertEqual(calls.status, 0, calls.output)
        let answers = calls.stdout.split(separator: "\n").map(String.init)
        XCTAssertEqual(answers.filter { $0 == "a" }.count, 3, calls.stdout)
        XCTAssertEqual(answers.filter { $0 == "b" }.count, 3, calls.stdout)
        // The HTTP port balances per request (LEAST_REQUEST): twenty calls reach both.
        let http = mesh.weft(["run", "--name", mesh.name("cli"), "--service", "client", "--", "sh", "-c",
                              "for i in $(seq 20); do curl -sS -m 5 http://\(web.vip):80/id.txt; done"], timeout: 60)
        XCTAssertEqual(Set(http.stdout.split(separator: "\n").map(String.init)), ["a", "b"], http.output)

        // The service does not declare port 81: refused at once, with the reason logged.
        let wrongPort = mesh.weft(["run", "--name", mesh.name("cli"), "--service", "client", "--",
                                   "curl", "-sS", "-m", "5", "http://\(web.vip):81/"], timeout: 30)
        XCTAssertNotEqual(wrongPort.status, 0)
        XCTAssertTrue(mesh.agentLog.contains("service web.shop has no port 81"), mesh.agentLog.suffix(1500).description)

        // Replica b stops: its endpoint leaves, every call now reaches a.
        kill(b.process.processIdentifier, SIGTERM)
        XCTAssertNotNil(mesh.wait(b))
        XCTAssertEqual(try services().first { $0.key.name.rawValue == "web" }?.endpoints.map(\.workload), [mesh.name("a")])
        let after = mesh.weft(["run", "--name", mesh.name("cli"), "--service", "client", "--", "sh", "-c",
                               "for i in 1 2 3 4; do curl -sS -m 5 http://\(web.vip):80/id.txt; done"], timeout: 60)
        XCTAssertEqual(after.stdout, "a\na\na\na\n", after.output)

        // IPv6 virtual IP reaches the same service.
        let vip6 = try XCTUnwrap(web.vip6)
        let v6 = mesh.weft(["run", "--name", mesh.name("cli"), "--service", "client", "--",
                            "curl", "-6", "-sS", "-m", "5", "http://[\(vip6)]:80/id.txt"], timeout: 30)
        XCTAssertEqual(v6.stdout, "a\n", v6.output)
    }

    func testServiceWithNoEndpointsIsRefusedFast() throws {
        let a = try startReplica("a")
        let vip = try XCTUnwrap(try services().first?.vip)
        kill(a.process.processIdentifier, SIGTERM)
        XCTAssertNotNil(mesh.wait(a))
        // An L4 port (no protocol declared): the connection is reset at once.
        let started = Date()
        let r = mesh.weft(["run", "--name", mesh.name("cli"), "--service", "client", "--",
                           "curl", "-sS", "-m", "5", "http://\(vip):90/"], timeout: 30)
        XCTAssertNotEqual(r.status, 0)
        XCTAssertLessThan(Date().timeIntervalSince(started), 4)
        XCTAssertTrue(mesh.agentLog.contains("service web.shop (\(vip):90) has no endpoints"), mesh.agentLog.suffix(1500).description)
        // The HTTP port answers in HTTP: 503 with the UH flag.
        let http = mesh.weft(["run", "--name", mesh.name("cli"), "--service", "client", "--",
                              "curl", "-sS", "-m", "5", "-D", "-", "http://\(vip):80/"], timeout: 30)
        XCTAssertTrue(http.stdout.contains("HTTP/1.1 503"), http.output)
        XCTAssertTrue(http.stdout.lowercased().contains("x-weft-response-flags: uh"), http.stdout)
    }
}
