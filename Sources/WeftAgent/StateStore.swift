import Foundation
import WeftCore

/// The agent's memory across restarts: the specs of attached workloads, in
/// `<state-dir>/workloads.json` (directory 0700, file 0600, replaced atomically). On start
/// the agent re-attaches every workload whose netns still exists; their capture rules never
/// left, so traffic resumes as soon as the proxies are back.
struct StateStore: Sendable {
    let directory: String
    var file: String { directory + "/workloads.json" }

    func load() throws -> [WorkloadSpec] {
        guard FileManager.default.fileExists(atPath: file) else { return [] }
        let data = try Data(contentsOf: URL(fileURLWithPath: file))
        do {
            return try JSONDecoder().decode([WorkloadSpec].self, from: data)
        } catch {
            throw WeftError(.system, "\(file) is unreadable (\(error)); move it away to start without it")
        }
    }

    var vipFile: String { directory + "/services.json" }

    struct VIP: Codable {
        var service: ServiceKey
        var vip: IPAddress
    }

    func loadVIPs() -> [ServiceKey: IPAddress] {
        guard let data = FileManager.default.contents(atPath: vipFile),
              let list = try? JSONDecoder().decode([VIP].self, from: data) else { return [:] }
        return Dictionary(list.map { ($0.service, $0.vip) }, uniquingKeysWith: { a, _ in a })
    }

    func saveVIPs(_ vips: [ServiceKey: IPAddress]) throws {
        let list = vips.map { VIP(service: $0.key, vip: $0.value) }.sorted { $0.service < $1.service }
        try write(JSONEncoder().encode(list), to: vipFile)
    }

    private func write(_ data: Data, to file: String) throws {
        let fm = FileManager.default
        try fm.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let temp = file + ".tmp"
        guard fm.createFile(atPath: temp, contents: data, attributes: [.posixPermissions: 0o600]) else {
            throw WeftError(.system, "cannot write \(temp)")
        }
        if rename(temp, file) != 0 {
            throw WeftError(.system, "cannot replace \(file): \(String(cString: strerror(errno)))")
        }
    }

    func save(_ specs: [WorkloadSpec]) throws {
        let fm = FileManager.default
        try fm.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        let data = try encoder.encode(specs.sorted { $0.name < $1.name })
        let temp = file + ".tmp"
        guard fm.createFile(atPath: temp, contents: data, attributes: [.posixPermissions: 0o600]) else {
            throw WeftError(.system, "cannot write \(temp)")
        }
        if rename(temp, file) != 0 {
            throw WeftError(.system, "cannot replace \(file): \(String(cString: strerror(errno)))")
        }
    }
}
