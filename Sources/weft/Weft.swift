import Glibc
import ArgumentParser
import Foundation
import Logging
import ServiceLifecycle
import WeftAgent
import WeftCore

@main
struct Weft: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "weft",
        abstract: "A transparent service mesh for Linux hosts.",
        version: WeftVersion.current,
        subcommands: [InitCommand.self, AgentCommand.self, RunCommand.self, AttachCommand.self, DetachCommand.self,
                      GetCommand.self, LintCommand.self, ApplyCommand.self, DeleteCommand.self, CACommand.self, ControlCommand.self, ProxyStatus.self, ProxyConfig.self, Top.self]
    )
}

/// Prints a WeftError the way every command does and exits with `code`.
func fail(_ error: Error, exitCode: Int32 = 1) -> Never {
    let text = (error as? WeftError)?.description ?? "\(error)"
    FileHandle.standardError.write(Data("weft: error: \(text)\n".utf8))
    exit(exitCode)
}

/// Runs a long-lived service in the foreground: logs to stderr at `level`, stops gracefully
/// on SIGTERM/SIGINT.
func runService<S: Service>(label: String, level: Logger.Level, _ make: (Logger) -> S) async throws {
    RuntimeLogLevel.shared.level = level
    LoggingSystem.bootstrap { label in RuntimeLevelLogHandler(label: label) }
    let logger = Logger(label: label)
    let group = ServiceGroup(configuration: .init(services: [.init(service: make(logger))],
                                                  gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
    try await group.run()
}

func warn(_ text: String) {
    FileHandle.standardError.write(Data("weft: warning: \(text)\n".utf8))
}

func requireRoot(_ what: String) throws {
    guard geteuid() == 0 else {
        throw WeftError(.notRoot, "\(what) needs root", hint: "run it with sudo")
    }
}

struct AgentSocketOption: ParsableArguments {
    @Option(name: .customLong("agent-socket"), help: "The agent's local API socket.")
    var path: String = ProcessInfo.processInfo.environment["WEFT_AGENT_SOCKET"] ?? WeftDefaults.agentSocket
}

/// Parsers for the list flags (`--exclude-outbound-ports 22,25`; repeatable).
enum ListParsing {
    static func ports(_ values: [String], flag: String) throws -> [UInt16] {
        try values.flatMap { $0.split(separator: ",") }.map { raw in
            guard let p = UInt16(raw.trimmingCharacters(in: .whitespaces)), p > 0 else {
                throw WeftError(.invalidArgument, "\(flag): '\(raw)' is not a port number (1-65535)")
            }
            return p
        }
    }

    static func cidrs(_ values: [String], flag: String) throws -> [CIDR] {
        try values.flatMap { $0.split(separator: ",") }.map { raw in
            guard let c = CIDR(raw.trimmingCharacters(in: .whitespaces)) else {
                throw WeftError(.invalidArgument, "\(flag): '\(raw)' is not an address or CIDR (e.g. 10.0.0.0/8, fd00::/8)")
            }
            return c
        }
    }

    static func labels(_ values: [String]) throws -> [String: String] {
        var out: [String: String] = [:]
        for v in values {
            let l = try Label(parsing: v)
            out[l.key] = l.value
        }
        return out
    }
}
