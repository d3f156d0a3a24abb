import Foundation
import Logging
import WeftCore

/// Watches the agent's config directory (`--config-dir`): every `*.yaml` / `*.yml` file in
/// it, as a whole, is the config that directory defines. Polled (once a second by default)
/// by name, size and modification time, which also sees editors that save by rename and
/// symlink swaps (ConfigMap-style `..data` links). A change that does not validate is
/// logged with file, line and reason, and the last good config keeps serving.
struct ConfigDirectoryWatcher {
    let path: String
    let registry: WorkloadRegistry
    let logger: Logger
    var interval: Duration = .seconds(1)

    static let extensions: Set<String> = ["yaml", "yml"]

    /// Name, size and mtime of each config file; nil when the directory cannot be read.
    static func fingerprint(_ path: String) -> [String]? {
        let fm = FileManager.default
        guard let names = try? fm.contentsOfDirectory(atPath: path) else { return nil }
        return names.filter { !$0.hasPrefix(".") && extensions.contains(($0 as NSString).pathExtension.lowercased()) }.sorted().map { name in
            let attrs = try? fm.attributesOfItem(atPath: path + "/" + name)  // follows symlinks for the target's
            let size = (attrs?[.size] as? NSNumber)?.intValue ?? -1
            let mtime = (attrs?[.modificationDate] as? Date)?.timeIntervalSince1970 ?? 0
            return "\(name)|\(size)|\(mtime)"
        }
    }

    static func read(_ path: String) throws -> [ConfigFile] {
        let names = try FileManager.default.contentsOfDirectory(atPath: path)
            .filter { !$0.hasPrefix(".") && extensions.contains(($0 as NSString).pathExtension.lowercased()) }.sorted()
        return try names.map { name in
            let file = path + "/" + name
            return ConfigFile(name: file, content: try String(contentsOfFile: file, encoding: .utf8))
        }
    }

    /// Applies the directory once; returns whether it was read.
    @discardableResult
    func syncOnce() async -> Bool {
        let files: [ConfigFile]
        do { files = try Self.read(path) } catch {
            logger.error("config directory \(path): cannot read: \(error)")
            return false
        }
        let reply = await registry.syncConfigDirectory(files)
        if reply.rejected {
            logger.error("config directory \(path) rejected; the last good config keeps serving",
                         metadata: ["diagnostics": "\(reply.diagnostics.joined(separator: " | "))"])
            for d in reply.diagnostics { logger.error("  \(d)") }
        } else {
            for d in reply.diagnostics { logger.warning("config directory: \(d)") }
            if !reply.changes.isEmpty {
                logger.info("config directory \(path) applied: \(reply.changes.joined(separator: ", ")) (version \(reply.version))")
            }
        }
        return true
    }

    /// Runs until cancelled.
    func run() async {
        var last: [String]?
        var missingLogged = false
        while !Task.isCancelled {
            if let now = Self.fingerprint(path) {
                missingLogged = false
                if now != last, await syncOnce() { last = now }
            } else if !missingLogged {
                logger.warning("config directory \(path) does not exist or cannot be read; watching for it")
                missingLogged = true
            }
            try? await Task.sleep(for: interval)
        }
    }
}
