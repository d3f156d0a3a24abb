import Foundation
import WeftCore
import XCTest
@testable import WeftAgent
import WeftConfig

final class ConfigStoreTests: XCTestCase {
    func vs(_ name: String) -> String {
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: \(name)}\nspec:\n  hosts: [\(name)]\n  http: [{route: [{destination: {host: \(name)}}]}]\n"
    }

    func testDirectorySyncRemovesOnlyWhatTheDirectoryDefined() throws {
        var store = ConfigStore()
        XCTAssertFalse(store.apply([ConfigFile(name: "cli.yaml", content: vs("api"))]).rejected)
        var reply = store.syncDirectory([ConfigFile(name: "d/a.yaml", content: vs("a")), ConfigFile(name: "d/b.yaml", content: vs("b"))])
        XCTAssertFalse(reply.rejected, "\(reply.diagnostics)")
        XCTAssertEqual(reply.changes, ["VirtualService/default/a created", "VirtualService/default/b created"])
        XCTAssertEqual(store.syncDirectory([ConfigFile(name: "d/a.yaml", content: vs("a")), ConfigFile(name: "d/b.yaml", content: vs("b"))]).changes, [],
                       "an unchanged directory changes nothing")
        reply = store.syncDirectory([ConfigFile(name: "d/a.yaml", content: vs("a"))])
        XCTAssertEqual(reply.changes, ["VirtualService/default/b deleted"])
        XCTAssertEqual(store.resources.map(\.metadata.name).sorted(), ["a", "api"], "weft apply's resource stays")

        // A bad file refuses the whole directory and keeps the last good.
        reply = store.syncDirectory([ConfigFile(name: "d/a.yaml", content: vs("a") + "  bogus: 1\n")])
        XCTAssertTrue(reply.rejected)
        XCTAssertTrue(reply.diagnostics.joined().contains("d/a.yaml:7"), "\(reply.diagnostics)")
        XCTAssertEqual(store.resources.map(\.metadata.name).sorted(), ["a", "api"])

        // Origins survive a restart: an emptied directory then removes "a" but not "api".
        let dir = NSTemporaryDirectory() + "weft-cfg-\(UUID().uuidString.prefix(6))"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try store.save(to: dir)
        var restored = ConfigStore()
        XCTAssertFalse(restored.apply([try XCTUnwrap(ConfigStore.load(from: dir))]).rejected)
        restored.restoreDirectoryOrigins(from: dir)
        XCTAssertEqual(restored.syncDirectory([]).changes, ["VirtualService/default/a deleted"])
        XCTAssertEqual(restored.resources.map(\.metadata.name), ["api"])
    }

    func testSnapshotsReplaceEverythingAllOrNothingAtTheirVersion() throws {
        var store = ConfigStore()
        XCTAssertFalse(store.apply([ConfigFile(name: "cli.yaml", content: vs("old"))]).rejected)
        var reply = store.replaceAll(documents: [vs("a"), vs("b")], version: 7)
        XCTAssertFalse(reply.rejected, "\(reply.diagnostics)")
        XCTAssertEqual(reply.changes, ["VirtualService/default/a created", "VirtualService/default/b created",
                                       "VirtualService/default/old deleted"])
        XCTAssertEqual(store.version, 7, "the control plane's version, not a local count")
        // One bad document: nothing changes, the reply names the document.
        reply = store.replaceAll(documents: [vs("c"), "kind: VirtualService\nspec: ["], version: 8)
        XCTAssertTrue(reply.rejected)
        XCTAssertTrue(reply.diagnostics.joined().contains("control-plane config v8, document 2"), "\(reply.diagnostics)")
        XCTAssertEqual(store.version, 7)
        XCTAssertEqual(store.resources.map(\.metadata.name), ["a", "b"])
        // An empty snapshot is a valid (empty) config.
        reply = store.replaceAll(documents: [], version: 9)
        XCTAssertFalse(reply.rejected)
        XCTAssertEqual(store.resources.count, 0)
    }
}
