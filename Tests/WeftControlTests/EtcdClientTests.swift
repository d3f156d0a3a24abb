import Foundation
import NIOPosix
import Logging
import WeftCore
import WeftIdentity
import XCTest
@testable import WeftControl

/// Against a real etcd (one member on loopback, its own data directory), started and stopped
/// by the test.
final class EtcdClientTests: XCTestCase {
    /// One etcd member on loopback ports; returns its client port and how to stop it.
    static func startEtcd() throws -> (Int, () -> Void) {
        guard let etcd = ["/usr/bin/etcd", "/usr/local/bin/etcd"].first(where: FileManager.default.isExecutableFile) else {
            throw XCTSkip("SKIPPED: etcd is not installed; run scripts/setup-deps")
        }
        let dir = NSTemporaryDirectory() + "weft-etcd-\(UUID().uuidString.prefix(8))"
        let client = Int.random(in: 30000...39999), peer = client + 10000
        let p = Process()
        p.executableURL = URL(fileURLWithPath: etcd)
        p.arguments = ["--name", "t", "--data-dir", dir, "--listen-client-urls", "http://127.0.0.1:\(client)",
                       "--advertise-client-urls", "http://127.0.0.1:\(client)", "--listen-peer-urls", "http://127.0.0.1:\(peer)",
                       "--initial-advertise-peer-urls", "http://127.0.0.1:\(peer)", "--initial-cluster", "t=http://127.0.0.1:\(peer)"]
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        return (client, {
            p.terminate()
            p.waitUntilExit()
            try? FileManager.default.removeItem(atPath: dir)
        })
    }

    static func waitReady(_ client: EtcdClient) async throws {
        for _ in 0..<100 {
            if (try? await client.getPrefix("probe")) != nil { return }
            try await Task.sleep(for: .milliseconds(100))
        }
        XCTFail("etcd did not come up")
    }

    func testParseStoreURLs() throws {
        XCTAssertEqual(try EtcdClient.parse("etcd://h1:2379,h2,10.0.0.3:2380").map(\.description), ["h1:2379", "h2:2379", "10.0.0.3:2380"])
        XCTAssertThrowsError(try EtcdClient.parse("http://h1:2379"))
        XCTAssertThrowsError(try EtcdClient.parse("etcd://h1:notaport"))
        XCTAssertEqual(EtcdClient.prefixEnd("weft/"), "weft0")
    }

    func testGetPutPrefixCompareAndPutAndFailover() async throws {
        let (client, stop) = try Self.startEtcd()
        defer { stop() }
        // A dead endpoint first: the client moves on to the live one.
        let etcdClient = EtcdClient(endpoints: [.init(host: "127.0.0.1", port: 1), .init(host: "127.0.0.1", port: client)],
                                    group: MultiThreadedEventLoopGroup.singleton)
        try await Self.waitReady(etcdClient)

        let missing = try await etcdClient.get("weft/none")
        XCTAssertNil(missing)
        try await etcdClient.put("weft/a", Array("one".utf8))
        let fetched = try await etcdClient.get("weft/a")
        let a = try XCTUnwrap(fetched)
        XCTAssertEqual(String(decoding: a.value, as: UTF8.self), "one")
        // Compare-and-put: only against the revision last seen.
        let swapped = try await etcdClient.compareAndPut("weft/a", Array("two".utf8), expectedModRevision: a.modRevision)
        XCTAssertTrue(swapped)
        let stale = try await etcdClient.compareAndPut("weft/a", Array("three".utf8), expectedModRevision: a.modRevision)
        XCTAssertFalse(stale, "a write based on an old revision must fail")
        let created = try await etcdClient.compareAndPut("weft/b", Array("new".utf8), expectedModRevision: 0)
        XCTAssertTrue(created)
        let again = try await etcdClient.compareAndPut("weft/b", Array("dup".utf8), expectedModRevision: 0)
        XCTAssertFalse(again, "create-if-absent refuses an existing key")
        try await etcdClient.put("other/c", Array("x".utf8))
        let listed = try await etcdClient.getPrefix("weft/")
        XCTAssertEqual(listed.map(\.key), ["weft/a", "weft/b"])
        XCTAssertEqual(listed.map { String(decoding: $0.value, as: UTF8.self) }, ["two", "new"])

        // Everything down: one error naming every endpoint.
        let dead = EtcdClient(endpoints: [.init(host: "127.0.0.1", port: 1), .init(host: "127.0.0.1", port: 2)],
                              group: MultiThreadedEventLoopGroup.singleton, timeout: .milliseconds(500))
        do {
            _ = try await dead.get("weft/a")
            XCTFail("no etcd, yet an answer")
        } catch {
            XCTAssertTrue("\(error)".contains("etcd is unreachable (127.0.0.1:1: ") && "\(error)".contains("127.0.0.1:2: "), "\(error)")
        }
    }
}

/// Two control planes on one store: a config change based on a stale view loses (nothing
/// applied, the loser takes in the winner's config), and each sees the other's changes.
final class ReplicatedStoreTests: XCTestCase {
    func testConcurrentChangesThroughTwoControlPlanesCannotBothWin() async throws {
        let (port, stop) = try EtcdClientTests.startEtcd()
        defer { stop() }
        let client = EtcdClient(endpoints: [.init(host: "127.0.0.1", port: port)], group: MultiThreadedEventLoopGroup.singleton)
        try await EtcdClientTests.waitReady(client)
        let mirror = EtcdMirror(client: client)
        let dirA = NSTemporaryDirectory() + "weft-ra-\(UUID().uuidString)", dirB = NSTemporaryDirectory() + "weft-rb-\(UUID().uuidString)"
        defer {
            try? FileManager.default.removeItem(atPath: dirA)
            try? FileManager.default.removeItem(atPath: dirB)
        }
        func open(_ dir: String) async throws -> ControlPlane {
            try SecretFile.makeDirectory(dir)
            _ = try await mirror.hydrate(into: dir)
            let p = try ControlPlane(stateDirectory: dir, trustDomain: "weft.local", mirror: mirror, logger: Logger(label: "t"))
            try await mirror.seed(from: dir)
            try await p.takeStoreRevisions()
            return p
        }
        let a = try await open(dirA), b = try await open(dirB)
        let pinA = await a.caPin, pinB = await b.caPin
        XCTAssertEqual(pinA, pinB, "one CA for both")
        func vs(_ host: String) -> ConfigFile {
            ConfigFile(name: "\(host).yaml", content: "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: \(host)}\nspec:\n  hosts: [\(host)]\n  http: [{route: [{destination: {host: \(host)}}]}]\n")
        }
        let first = await a.applyConfig([vs("one")])
        XCTAssertFalse(first.rejected, "\(first.diagnostics)")
        // B has not seen version 1 yet: its change is refused whole, and it catches up.
        let stale = await b.applyConfig([vs("two")])
        XCTAssertTrue(stale.rejected)
        XCTAssertTrue(stale.diagnostics.joined().contains("another control plane changed the config at the same moment"), "\(stale.diagnostics)")
        let caughtUp = await b.snapshot
        XCTAssertEqual(caughtUp.version, 1)
        XCTAssertEqual(caughtUp.documents.count, 1)
        let second = await b.applyConfig([vs("two")])
        XCTAssertFalse(second.rejected, "\(second.diagnostics)")
        await a.refresh()
        let seen = await a.snapshot
        XCTAssertEqual(seen.version, 2)
        XCTAssertEqual(seen.documents.count, 2)
        // Tokens made on one are accepted by the other; registrations are shared too.
        let token = try await a.createToken(ttl: 600)
        await b.refresh()
        let key = WorkloadKey()
        let id = try ControlPlane.nodeIdentity(trustDomain: "weft.local", node: "n1")
        let joined = try await b.join(JoinRequest(token: token.token, node: "n1", csrPEM: try key.csrPEM(for: id)), authenticatedNode: nil, address: nil)
        XCTAssertEqual(joined.identity, id.description)
        let web = WorkloadSpec(name: "web", netns: try NetnsName("web"), service: try ServiceName("web"), ports: [], labels: [:], podIP: nil)
        _ = try await b.register([web], node: "n1")
        await a.refresh()
        let registry = await a.registry
        XCTAssertEqual(registry.first { $0.node == "n1" }?.workloads, [web])
        await a.shutdown()
        await b.shutdown()
    }
}
