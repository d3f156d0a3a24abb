import Glibc
import ArgumentParser
import Foundation
import WeftAgent
import WeftCore

struct GetCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "get", abstract: "Show what the agent knows.", subcommands: [GetWorkloads.self, GetServices.self, GetConfig.self])
}

enum OutputFormat: String, ExpressibleByArgument, CaseIterable {
    case table, json
}

struct GetWorkloads: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "workloads", abstract: "List attached workloads and their traffic counters.")

    @Option(name: .shortAndLong, help: "table or json.") var output: OutputFormat = .table
    @OptionGroup var agent: AgentSocketOption

    func run() throws {
        do {
            let workloads = try AgentClient(socketPath: agent.path).call(.listWorkloads).workloads ?? []
            switch output {
            case .json:
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
                print(String(decoding: try encoder.encode(workloads), as: UTF8.self))
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

    @Option(name: .shortAndLong, help: "table or json.") var output: OutputFormat = .table
    @OptionGroup var agent: AgentSocketOption

    func run() throws {
        do {
            let services = try AgentClient(socketPath: agent.path).call(.listServices).services ?? []
            switch output {
            case .json:
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
                print(String(decoding: try encoder.encode(services), as: UTF8.self))
            case .table:
                var rows = [["NAME", "NAMESPACE", "VIP", "VIP6", "PORTS", "ENDPOINTS"]]
                for s in services {
                    rows.append([s.key.name.rawValue, s.key.namespace.rawValue, "\(s.vip)", s.vip6.map { "\($0)" } ?? "-",
                                 s.ports.isEmpty ? "-" : s.ports.map(\.description).joined(separator: ","),
                                 s.endpoints.isEmpty ? "none" : s.endpoints.map { "\($0.ip)" }.joined(separator: ",")])
                }
                print(TextTable.render(rows), terminator: "")
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
