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
