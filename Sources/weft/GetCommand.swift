import Glibc
import ArgumentParser
import Foundation
import WeftAgent
import WeftControl
import WeftCore
import Yams

struct GetCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "get", abstract: "Show what the agent knows.", subcommands: [GetWorkloads.self, GetServices.self, GetConnections.self, GetConfig.self, GetCerts.self, GetAgents.self])
}

enum OutputFormat: String, ExpressibleByArgument, CaseIterable {
    case table, json, yaml

    /// Prints a value as JSON or YAML (table output is each command's own).
    func emit<T: Encodable>(_ value: T) throws {
        switch self {
        case .json, .table:
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            print(String(decoding: try encoder.encode(value), as: UTF8.self))
        case .yaml:
            let encoder = YAMLEncoder()
            encoder.options.sortKeys = true
            print(try encoder.encode(value), terminator: "")
        }
    }
}

struct GetWorkloads: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "workloads", abstract: "List attached workloads and their traffic counters.")

    @Option(name: .shortAndLong, help: "table, json or yaml.") var output: OutputFormat = .table
    @OptionGroup var agent: AgentSocketOption

    func run() throws {
        do {
            let workloads = try AgentClient(socketPath: agent.path).call(.listWorkloads).workloads ?? []
            switch output {
            case .json, .yaml:
                try output.emit(workloads)
            case .table:
                print(WorkloadTable.render(workloads), terminator: "")
            }
        } catch {
            fail(error)
        }
    }
}

struct GetServices: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "services", abstract: "List services: virtual IPs, ports and endpoints.")

    @Option(name: .shortAndLong, help: "table, json or yaml.") var output: OutputFormat = .table
    @OptionGroup var agent: AgentSocketOption

    func run() throws {
        do {
            let services = try AgentClient(socketPath: agent.path).call(.listServices).services ?? []
            switch output {
            case .json, .yaml:
                try output.emit(services)
            case .table:
                var rows = [["NAME", "NAMESPACE", "VIP", "VIP6", "PORTS", "ENDPOINTS", "EJECTED", "UNHEALTHY", "BREAKER"]]
                for s in services {
                    rows.append([s.key.name.rawValue, s.key.namespace.rawValue, "\(s.vip)", s.vip6.map { "\($0)" } ?? "-",
                                 s.ports.isEmpty ? "-" : s.ports.map(\.description).joined(separator: ","),
                                 s.endpoints.isEmpty ? "none" : s.endpoints.map { "\($0.ip)" }.joined(separator: ","),
                                 s.ejected.isEmpty ? "-" : s.ejected.joined(separator: ","),
                                 s.unhealthy.isEmpty ? "-" : s.unhealthy.joined(separator: ","), s.breaker ?? "-"])
                }
                print(TextTable.render(rows), terminator: "")
            }
        } catch {
            fail(error)
        }
    }
}

struct GetConnections: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "connections",
        abstract: "Recent outbound connections per workload and the protocol each was handled as.",
        discussion: """
            PROTOCOL is http/1.1 or h2c (the L7 path) or tls/opaque (forwarded as bytes). DECIDED BY is \
            declared (the service port names it), sniffed (the client's first bytes), server-first \
            (the upstream spoke first), client-eof, or timeout (the client stalled mid-way through \
            something that could have been HTTP).
            """)

    @Option(name: .shortAndLong, help: "Only this workload.") var workload: String?
    @Option(name: .shortAndLong, help: "table, json or yaml.") var output: OutputFormat = .table
    @OptionGroup var agent: AgentSocketOption

    struct Row: Codable {
        var workload: String
        var connection: ConnectionRecord
    }

    func run() throws {
        do {
            var workloads = try AgentClient(socketPath: agent.path).call(.listWorkloads).workloads ?? []
            if let workload {
                workloads = workloads.filter { $0.spec.name == workload || $0.spec.netns.rawValue == workload }
                guard !workloads.isEmpty else {
                    throw WeftError(.notFound, "no workload named \(workload)", hint: "weft get workloads lists them")
                }
            }
            let rows = workloads.flatMap { w in w.recentConnections.map { Row(workload: w.spec.name, connection: $0) } }
            switch output {
            case .json, .yaml:
                try output.emit(rows)
            case .table:
                var table = [["WORKLOAD", "CLIENT", "DESTINATION", "PROTOCOL", "DECIDED BY", "DETECT MS"]]
                for r in rows {
                    let c = r.connection
                    table.append([r.workload, c.client, c.destination, c.proto, c.decidedBy, String(format: "%.3f", c.detectMillis)])
                }
                print(TextTable.render(table), terminator: "")
            }
        } catch {
            fail(error)
        }
    }
}

enum TextTable {
    static func render(_ rows: [[String]]) -> String {
        let widths = rows[0].indices.map { i in rows.map { $0[i].count }.max() ?? 0 }
        return rows.map { row in
            row.enumerated().map { i, cell in cell.padding(toLength: widths[i], withPad: " ", startingAt: 0) }
                .joined(separator: "  ").trimmingCharacters(in: .whitespaces)
        }.joined(separator: "\n") + "\n"
    }
}

enum WorkloadTable {
    static func render(_ workloads: [WorkloadStatus]) -> String {
        var rows = [["NAME", "NETNS", "SERVICE", "POD IP", "PORTS", "LABELS", "CONN IN/OUT", "BYTES IN", "BYTES OUT"]]
        for w in workloads {
            let c = w.counters
            rows.append([
                w.spec.name, w.spec.netns.rawValue, w.spec.service.rawValue,
                w.spec.podIP.map { "\($0)" } ?? "-",
                w.spec.ports.isEmpty ? "-" : w.spec.ports.map(\.description).joined(separator: ","),
                w.spec.labels.isEmpty ? "-" : w.spec.labels.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ","),
                "\(c.connectionsInbound)/\(c.connectionsOutbound)",
                "\(c.bytesInboundReceived)/\(c.bytesInboundSent)",
                "\(c.bytesOutboundSent)/\(c.bytesOutboundReceived)",
            ])
        }
        return TextTable.render(rows)
    }
}

struct GetCerts: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "certs",
        abstract: "Workload certificates: identity, serial, expiry and renewal time; --bundle prints the trust bundle.",
        discussion: "Certificates are renewed at half life with a fresh key; ISSUED counts certificates since the workload was attached.")

    @Option(name: .shortAndLong, help: "table, json or yaml.") var output: OutputFormat = .table
    @Flag(help: "Print the trust bundle (PEM roots) instead.") var bundle = false
    @OptionGroup var agent: AgentSocketOption

    func run() throws {
        do {
            guard let reply = try AgentClient(socketPath: agent.path).call(.listCertificates).certificates else {
                throw WeftError(.protocolError, "the agent sent no certificates")
            }
            if bundle {
                print(reply.bundlePEM, terminator: "")
                return
            }
            switch output {
            case .json, .yaml:
                try output.emit(reply)
            case .table:
                let now = Date()
                var rows = [["WORKLOAD", "IDENTITY", "SERIAL", "NOT AFTER", "EXPIRES IN", "RENEW IN", "ISSUED"]]
                for c in reply.workloads {
                    rows.append([c.workload, c.identity, c.serial, ISO8601DateFormatter().string(from: c.notAfter),
                                 Self.span(c.notAfter.timeIntervalSince(now)), Self.span(c.renewAt.timeIntervalSince(now)), "\(c.issued)"])
                }
                print(TextTable.render(rows), terminator: "")
            }
        } catch {
            fail(error)
        }
    }

    static func span(_ seconds: TimeInterval) -> String {
        let s = Int(seconds.rounded())
        if s <= 0 { return "now" }
        if s < 120 { return "\(s)s" }
        if s < 7200 { return "\(s / 60)m" }
        return "\(s / 3600)h\(s % 3600 / 60)m"
    }
}
