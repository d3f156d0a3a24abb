import Foundation
import WeftCore

/// The config in force: VirtualServices and DestinationRules by kind/namespace/name, with
/// their documents. A change is all-or-nothing: every file must parse and the merged result
/// must validate, or nothing changes and the last good config keeps serving. Persisted to
/// `<state-dir>/config.yaml` (0600) and reloaded at start.
///
/// Resources come from `weft apply` or from the agent's watched config directory; the
/// directory's are marked, so a file removed from the directory removes what it defined
/// (and only that), also across restarts.
public struct ConfigStore: Sendable {
    private var entries: [String: Entry] = [:]
    public private(set) var version = 0

    public init() {}
    /// First line of a stored document that came from the config directory.
    public static let directoryMarker = "# weft: from the config directory\n"

    private typealias Entry = (resource: Resource, source: String)

    /// Cross-checks the merged result; returns parse + validation errors, diagnostics into `reply`.
    private static func countErrors(_ parsed: [ConfigParser.Result], _ merged: [String: Entry], into reply: inout ConfigReply) -> Int {
        let crossChecks = ConfigValidator.validate(merged.keys.sorted().map { merged[$0]!.resource })
        reply.diagnostics += crossChecks.map(\.description)
        return parsed.flatMap(\.errors).count + crossChecks.filter { $0.severity == .error }.count
    }

    public static func id(_ r: Resource) -> String { "\(r.kind)/\(r.metadata.namespace)/\(r.metadata.name)" }

    public var resources: [Resource] { entries.keys.sorted().map { entries[$0]!.resource } }
    public var documents: [String] { entries.keys.sorted().map { entries[$0]!.source } }

    public mutating func apply(_ files: [ConfigFile]) -> ConfigReply {
        var reply = ConfigReply()
        let parsed = files.map { ConfigParser.parse(yaml: $0.content, file: $0.name) }
        reply.diagnostics = parsed.flatMap(\.diagnostics).map(\.description)
        var merged = entries
        var changes: [String] = []
        for result in parsed {
            for (resource, source) in zip(result.resources, result.sources) {
                let id = Self.id(resource)
                changes.append(merged[id] == nil ? "\(id) created" : (merged[id]!.resource == resource ? "\(id) unchanged" : "\(id) configured"))
                merged[id] = (resource, source)
            }
        }
        let errors = Self.countErrors(parsed, merged, into: &reply)
        if errors > 0 || parsed.allSatisfy({ $0.resources.isEmpty }) {
            reply.rejected = true
            if parsed.allSatisfy({ $0.resources.isEmpty }) && errors == 0 { reply.diagnostics.append("no VirtualService or DestinationRule found") }
            reply.version = version
            return reply
        }
        entries = merged
        if changes.contains(where: { !$0.hasSuffix("unchanged") }) { version += 1 }
        reply.changes = changes
        reply.version = version
        return reply
    }

    /// Makes the resources from the config directory exactly those in `files`: resources
    /// that came from the directory and are no longer in it are removed; the rest is applied.
    /// All-or-nothing, like apply. An empty directory is valid (it removes what it defined).
    public mutating func syncDirectory(_ files: [ConfigFile]) -> ConfigReply {
        var reply = ConfigReply()
        let parsed = files.map { ConfigParser.parse(yaml: $0.content, file: $0.name) }
        reply.diagnostics = parsed.flatMap(\.diagnostics).map(\.description)
        var merged = entries
        var changes: [String] = []
        var wanted = Set<String>()
        for result in parsed {
            for (resource, source) in zip(result.resources, result.sources) {
                let id = Self.id(resource)
                wanted.insert(id)
                let marked = Self.directoryMarker + source
                if let old = merged[id] {
                    if old.resource != resource || old.source != marked { changes.append("\(id) configured") }
                } else {
                    changes.append("\(id) created")
                }
                merged[id] = (resource, marked)
            }
        }
        for (id, entry) in entries where entry.source.hasPrefix(Self.directoryMarker) && !wanted.contains(id) {
            merged.removeValue(forKey: id)
            changes.append("\(id) deleted")
        }
        let errors = Self.countErrors(parsed, merged, into: &reply)
        reply.version = version
        guard errors == 0 else {
            reply.rejected = true
            return reply
        }
        entries = merged
        if !changes.isEmpty { version += 1 }
        reply.changes = changes.sorted()
        reply.version = version
        return reply
    }

    public mutating func delete(_ files: [ConfigFile]) -> ConfigReply {
        var reply = ConfigReply()
        let parsed = files.map { ConfigParser.parse(yaml: $0.content, file: $0.name) }
        reply.diagnostics = parsed.flatMap(\.errors).map(\.description)
        var remaining = entries
        for resource in parsed.flatMap(\.resources) {
            let id = Self.id(resource)
            reply.changes.append(remaining.removeValue(forKey: id) == nil ? "\(id) not found" : "\(id) deleted")
        }
        let crossChecks = ConfigValidator.validate(remaining.keys.sorted().map { remaining[$0]!.resource }).filter { $0.severity == .error }
        if !reply.diagnostics.isEmpty || !crossChecks.isEmpty {
            reply.diagnostics += crossChecks.map { "\($0) (after the delete)" }
            reply.rejected = true
            reply.changes = []
            reply.version = version
            return reply
        }
        if reply.changes.contains(where: { $0.hasSuffix("deleted") }) { version += 1 }
        entries = remaining
        reply.version = version
        return reply
    }

    /// Makes the config exactly `documents` (a control plane's snapshot), at the control
    /// plane's `version`. All-or-nothing: any document that does not parse, or a merged
    /// result that does not validate, leaves the config as it was and the reply rejected.
    public mutating func replaceAll(documents: [String], version newVersion: Int) -> ConfigReply {
        var reply = ConfigReply()
        let parsed = documents.enumerated().map { i, text in
            ConfigParser.parse(yaml: text, file: "control-plane config v\(newVersion), document \(i + 1)")
        }
        reply.diagnostics = parsed.flatMap(\.diagnostics).map(\.description)
        var merged: [String: Entry] = [:]
        for result in parsed {
            for (resource, source) in zip(result.resources, result.sources) {
                merged[Self.id(resource)] = (resource, source)
            }
        }
        let errors = Self.countErrors(parsed, merged, into: &reply)
        guard errors == 0 else {
            reply.rejected = true
            reply.version = version
            return reply
        }
        for id in Set(entries.keys).union(merged.keys).sorted() {
            switch (entries[id], merged[id]) {
            case (nil, _?): reply.changes.append("\(id) created")
            case (_?, nil): reply.changes.append("\(id) deleted")
            case (let old?, let new?) where old.resource != new.resource: reply.changes.append("\(id) configured")
            default: break
            }
        }
        entries = merged
        version = newVersion
        reply.version = version
        return reply
    }

    public func save(to directory: String) throws {
        let fm = FileManager.default
        try fm.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let file = directory + "/config.yaml", temp = file + ".tmp"
        let text = documents.joined(separator: "---\n")
        guard fm.createFile(atPath: temp, contents: Data(text.utf8), attributes: [.posixPermissions: 0o600]) else {
            throw WeftError(.system, "cannot write \(temp)")
        }
        guard rename(temp, file) == 0 else { throw WeftError(.system, "cannot replace \(file): \(String(cString: strerror(errno)))") }
        // Which of them came from the config directory (YAML comments do not survive parsing).
        let fromDirectory = entries.filter { $0.value.source.hasPrefix(Self.directoryMarker) }.keys.sorted()
        let originFile = directory + "/config-directory.json"
        guard fm.createFile(atPath: originFile + ".tmp", contents: try JSONEncoder().encode(fromDirectory),
                            attributes: [.posixPermissions: 0o600]),
              rename(originFile + ".tmp", originFile) == 0 else {
            throw WeftError(.system, "cannot write \(originFile)")
        }
    }

    /// Marks restored resources that came from the config directory.
    public mutating func restoreDirectoryOrigins(from directory: String) {
        guard let data = FileManager.default.contents(atPath: directory + "/config-directory.json"),
              let ids = try? JSONDecoder().decode([String].self, from: data) else { return }
        for id in ids {
            if let entry = entries[id], !entry.source.hasPrefix(Self.directoryMarker) {
                entries[id] = (entry.resource, Self.directoryMarker + entry.source)
            }
        }
    }

    public static func load(from directory: String) -> ConfigFile? {
        let file = directory + "/config.yaml"
        guard let text = try? String(contentsOfFile: file, encoding: .utf8), !text.isEmpty else { return nil }
        return ConfigFile(name: file, content: text)
    }
}
