import Foundation
import WeftCore
import WeftIdentity

/// `--store etcd://…`: the control plane's state (CA, config and its version, store id, join
/// token hashes, registry) is kept in etcd under `weft/state/`, each file of the state
/// directory one key. At start the state directory is filled from etcd (so a control plane
/// started anywhere with the same etcd has the same CA, config, tokens and registry), and
/// what is missing in etcd is added from it (the first start, which makes the CA). Config
/// changes are written to etcd first: if etcd does not take them, nothing is applied.
public struct EtcdMirror: Sendable {
    public let client: EtcdClient
    static let prefix = "weft/state/"
    /// The files that make the store (relative to the state directory).
    static let files = ["ca/root-cert.pem", "ca/root-key.pem", "ca/bundle.pem", "config.yaml", "config-version.json",
                        "config-directory.json", "store-id", "tokens.json", "workloads.json"]

    public init(client: EtcdClient) {
        self.client = client
    }

    /// Writes every stored file into `directory` (0600, directories 0700). Returns how many.
    public func hydrate(into directory: String) async throws -> Int {
        let stored = try await client.getPrefix(Self.prefix)
        for kv in stored {
            let name = String(kv.key.dropFirst(Self.prefix.count))
            guard Self.files.contains(name) else { continue }
            let path = directory + "/" + name
            try SecretFile.makeDirectory((path as NSString).deletingLastPathComponent)
            try SecretFile.write(String(decoding: kv.value, as: UTF8.self), to: path)
        }
        return stored.count
    }

    /// Adds to etcd the files it does not have yet (create-if-absent, so two control planes
    /// starting at once cannot both make a CA: the loser is told to start again).
    public func seed(from directory: String) async throws {
        for name in Self.files {
            guard let data = FileManager.default.contents(atPath: directory + "/" + name) else { continue }
            let key = Self.prefix + name
            if try await client.get(key) != nil { continue }
            let created = try await client.compareAndPut(key, Array(data), expectedModRevision: 0)
            if !created, name.hasPrefix("ca/") {
                throw WeftError(.alreadyExists, "another control plane stored its CA in etcd at the same moment",
                                hint: "start this one again: it will use that CA")
            }
        }
    }

    /// Stores the named files of `directory` (written there just before).
    public func store(_ names: [String], from directory: String) async throws {
        for name in names {
            guard let data = FileManager.default.contents(atPath: directory + "/" + name) else { continue }
            try await client.put(Self.prefix + name, Array(data))
        }
    }

    /// The modification revision of a stored file (0: not in etcd).
    public func revision(of name: String) async throws -> Int64 {
        try await client.get(Self.prefix + name)?.modRevision ?? 0
    }

    /// Stores the named files of `directory` in one transaction, only if `compare` is still at
    /// `expected` (so two control planes changing the config at once cannot both win).
    /// Returns the new revision, nil when another one changed it first.
    public func commit(_ names: [String], compare: String, expected: Int64, from directory: String) async throws -> Int64? {
        let puts = names.compactMap { name in
            FileManager.default.contents(atPath: directory + "/" + name).map { (Self.prefix + name, Array($0)) }
        }
        return try await client.transaction(compareKey: Self.prefix + compare, expectedModRevision: expected, puts: puts)
    }

    /// Writes the named stored files into `directory`.
    public func fetch(_ names: [String], into directory: String) async throws {
        for name in names {
            guard let kv = try await client.get(Self.prefix + name) else { continue }
            try SecretFile.write(String(decoding: kv.value, as: UTF8.self), to: directory + "/" + name)
        }
    }

    static let registryPrefix = "weft/registry/"

    /// One node's part of the registry (each node's its own key: control planes serving
    /// different nodes never overwrite each other).
    public func putNode(_ node: NodeWorkloads) async throws {
        try await client.put(Self.registryPrefix + node.node, Array(try JSONEncoder().encode(node)))
    }

    public func nodes() async throws -> [NodeWorkloads] {
        try await client.getPrefix(Self.registryPrefix).compactMap { try? JSONDecoder().decode(NodeWorkloads.self, from: Data($0.value)) }
    }
}
