import ArgumentParser
import Foundation
import WeftAgent
import WeftControl
import WeftCore
import Yams

/// Reads -f arguments: files as given, directories as their *.yaml / *.yml, sorted.
enum ConfigFiles {
    static func read(_ paths: [String]) throws -> [ConfigFile] {
        guard !paths.isEmpty else { throw WeftError(.invalidArgument, "no -f FILE|DIR given") }
        let fm = FileManager.default
        var out: [ConfigFile] = []
        for path in paths {
            var isDir: ObjCBool = false
            guard fm.fileExists(atPath: path, isDirectory: &isDir) else {
                throw WeftError(.notFound, "-f \(path): no such file or directory")
            }
            let files = isDir.boolValue
                ? try fm.contentsOfDirectory(atPath: path).filter { $0.hasSuffix(".yaml") || $0.hasSuffix(".yml") }.sorted()
                    .map { (path as NSString).appendingPathComponent($0) }
                : [path]
            for file in files {
                do {
                    out.append(ConfigFile(name: file, content: try String(contentsOfFile: file, encoding: .utf8)))
                } catch {
                    throw WeftError(.invalidArgument, "-f \(file): cannot read: \(error.localizedDescription)")
                }
            }
        }
        return out
    }

    /// Prints a config reply; returns whether it was rejected.
    static func report(_ reply: ConfigReply, verb: String) -> Bool {
        for d in reply.diagnostics { print(d) }
        if reply.rejected {
            print("nothing was \(verb): fix the errors above; config version \(reply.version) stays in force")
        } else {
            for change in reply.changes { print(change) }
            print("config version \(reply.version) in force")
        }
        return reply.rejected
    }
}

/// Where config commands go: the agent (a single host), or `--control-socket` (env
/// WEFT_CONTROL_SOCKET) for a control plane that serves several agents.
struct ConfigTargetOption: ParsableArguments {
    @Option(name: .customLong("agent-socket"), help: "The agent's local API socket.")
    var agentSocket: String = ProcessInfo.processInfo.environment["WEFT_AGENT_SOCKET"] ?? WeftDefaults.agentSocket
    @Option(name: .customLong("control-socket"), help: "Send to the control plane's local API instead (e.g. \(WeftDefaults.controlSocket)).")
    var controlSocket: String? = ProcessInfo.processInfo.environment["WEFT_CONTROL_SOCKET"]

    var client: AgentClient { controlSocket.map(AgentClient.control) ?? AgentClient(socketPath: agentSocket) }
}

struct ApplyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "apply",
        abstract: "Apply VirtualService / DestinationRule YAML to the mesh (all files, or nothing).",
        discussion: "Checked exactly as `weft lint` checks; any error and nothing changes. Exit 1 when rejected.")

    @Option(name: .shortAndLong, help: "A YAML file or a directory of *.yaml / *.yml (repeatable).") var file: [String] = []
    @OptionGroup var target: ConfigTargetOption

    func run() throws {
        do {
            let files = try ConfigFiles.read(file)
            let reply = try target.client.call(.applyConfig(files)).config ?? ConfigReply()
            if ConfigFiles.report(reply, verb: "applied") { throw ExitCode(1) }
        } catch let e as ExitCode {
            throw e
        } catch {
            fail(error)
        }
    }
}

struct DeleteCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "delete", abstract: "Delete the resources named in YAML files from the mesh's config.")

    @Option(name: .shortAndLong, help: "A YAML file or a directory (repeatable).") var file: [String] = []
    @OptionGroup var target: ConfigTargetOption

    func run() throws {
        do {
            let files = try ConfigFiles.read(file)
            let reply = try target.client.call(.deleteConfig(files)).config ?? ConfigReply()
            if ConfigFiles.report(reply, verb: "deleted") { throw ExitCode(1) }
        } catch let e as ExitCode {
            throw e
        } catch {
            fail(error)
        }
    }
}

struct GetConfig: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "config", abstract: "Show the config in force.")

    @Option(name: .shortAndLong, help: "table, yaml (the documents as applied) or json.") var output: OutputFormat = .table
    @OptionGroup var target: ConfigTargetOption

    func run() throws {
        do {
            let response = try target.client.call(.getConfig)
            let reply = response.config ?? ConfigReply()
            switch output {
            case .yaml:
                print(reply.documents.joined(separator: "---\n"), terminator: "")
            case .json:
                // Each stored document as a JSON object, with the config version.
                let docs = try reply.documents.map { try Yams.load(yaml: $0) ?? NSNull() }
                let object: [String: Any] = ["version": reply.version, "documents": docs]
                let data = try JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys])
                print(String(decoding: data, as: UTF8.self))
            case .table:
                var rows = [["KIND", "NAMESPACE", "NAME"]]
                for doc in reply.documents {
                    let fields = Dictionary(doc.split(separator: "\n").compactMap { line -> (String, String)? in
                        let t = line.trimmingCharacters(in: .whitespaces)
                        for key in ["kind", "name", "namespace"] where t.hasPrefix("\(key): ") {
                            return (key, String(t.dropFirst(key.count + 2)))
                        }
                        return nil
                    }, uniquingKeysWith: { a, _ in a })
                    rows.append([fields["kind"] ?? "?", fields["namespace"] ?? "default", fields["name"] ?? "?"])
                }
                print(TextTable.render(rows), terminator: "")
                print("config version \(reply.version)")
                if let link = response.control { print(ControlStatusText.describe(link)) }
            }
        } catch {
            fail(error)
        }
    }
}

enum ControlStatusText {
    /// "source: control plane at 10.0.0.1:15012 (node n1), connected since …" or "…, unreachable since …: why".
    static func describe(_ s: ControlLinkStatus) -> String {
        let since = ISO8601DateFormatter().string(from: s.since)
        let state = s.connected ? "connected since \(since)" : "UNREACHABLE since \(since): \(s.lastError ?? "not connected yet"); serving the last good config"
        return "source: control plane at \(s.address) (node \(s.node)), \(state)"
    }
}
