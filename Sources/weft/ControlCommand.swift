import ArgumentParser
import Foundation
import Logging
import ServiceLifecycle
import WeftConfig
import WeftControl
import WeftCore

struct ControlSocketOption: ParsableArguments {
    @Option(name: .customLong("control-socket"), help: "The control plane's local API socket.")
    var path: String = ProcessInfo.processInfo.environment["WEFT_CONTROL_SOCKET"] ?? WeftDefaults.controlSocket
}

struct ControlCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "control",
        abstract: "Run the control plane (foreground; systemd Type=notify), or manage its join tokens.",
        discussion: """
            Serves agents started with `weft agent --control HOST:15012` over gRPC with TLS: config \
            snapshots they ACK or NACK, and node certificates from its CA. `weft apply \
            --control-socket PATH` changes the config it serves; `weft get agents` shows who is in sync. \
            Without any control plane, each agent is its own (the single-host default).
            """,
        subcommands: [ControlServe.self, ControlToken.self],
        defaultSubcommand: ControlServe.self)
}

struct ControlServe: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "serve", abstract: "Run the control plane (the default).")

    @Option(help: "gRPC listen address for agents, HOST:PORT (TLS).") var listen: String = "0.0.0.0:\(ControlAPI.defaultPort)"
    @Option(help: "Local API socket (root only).") var socket: String = WeftDefaults.controlSocket
    @Option(help: "State directory (config, CA, token hashes, agents).") var stateDir: String = WeftDefaults.controlStateDirectory
    @Option(help: "Keep the store in etcd as well: etcd://HOST[:PORT][,HOST[:PORT]...] (default: the state directory alone).")
    var store: String?
    @Option(help: "SPIFFE trust domain.") var trustDomain: String = "weft.local"
    @Option(help: "Lifetime of node certificates (agents renew at half life), e.g. 168h.") var nodeCertLifetime: String = "168h"
    @Option(help: "Lifetime of workload certificates (agents renew at half life), 1m to 90 days.") var certLifetime: String = "24h"
    @Option(help: "Lifetime of the control plane's own serving certificate (renewed at half life while running).")
    var servingCertLifetime: String = "24h"
    @Option(help: "trace, debug, info, notice, warning, error.") var logLevel: String = "info"

    func run() async throws {
        do {
            guard let level = Logger.Level(rawValue: logLevel) else {
                throw WeftError(.invalidArgument, "--log-level \(logLevel): use trace, debug, info, notice, warning or error")
            }
            var config = ControlConfiguration()
            let (host, port) = try AgentCommand.parseControl(listen)
            guard IPAddress(host) != nil else { throw WeftError(.invalidArgument, "--listen \(listen): expected IP:PORT") }
            config.listenHost = host
            config.listenPort = port
            config.socketPath = socket
            config.stateDirectory = stateDir
            if let store { config.etcd = try EtcdClient.parse(store) }
            config.trustDomain = trustDomain
            guard let lifetime = IstioDuration.parse(nodeCertLifetime), lifetime >= .seconds(60), lifetime <= .seconds(90 * 86400) else {
                throw WeftError(.invalidArgument, "--node-cert-lifetime \(nodeCertLifetime): expected a duration from 1m to 90 days")
            }
            config.nodeCertificateLifetime = lifetime
            guard let workloadLifetime = IstioDuration.parse(certLifetime), workloadLifetime >= .seconds(60), workloadLifetime <= .seconds(90 * 86400) else {
                throw WeftError(.invalidArgument, "--cert-lifetime \(certLifetime): expected a duration from 1m to 90 days (e.g. 2m, 24h)")
            }
            config.workloadCertificateLifetime = workloadLifetime
            guard let servingLifetime = IstioDuration.parse(servingCertLifetime), servingLifetime >= .seconds(60), servingLifetime <= .seconds(90 * 86400) else {
                throw WeftError(.invalidArgument, "--serving-cert-lifetime \(servingCertLifetime): expected a duration from 1m to 90 days")
            }
            config.servingCertificateLifetime = servingLifetime
            try await runService(label: "weft.control", level: level) { ControlServer(config: config, logger: $0) }
        } catch {
            fail(error)
        }
    }
}

struct ControlToken: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "token", abstract: "Join tokens for new nodes.",
                                                    subcommands: [ControlTokenCreate.self])
}

struct ControlTokenCreate: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "create", abstract: "Create a join token (printed once; the control plane keeps only its hash).")

    @Option(help: "How long the token can be used, e.g. 1h, 30m (at most 168h).") var ttl: String = "24h"
    @Option(name: .shortAndLong, help: "table or json.") var output: OutputFormat = .table
    @OptionGroup var control: ControlSocketOption

    func run() throws {
        do {
            guard let d = IstioDuration.parse(ttl), d >= .seconds(1) else {
                throw WeftError(.invalidArgument, "--ttl \(ttl): expected a duration such as 1h or 30m")
            }
            let reply = try AgentClient.control(control.path).call(.createToken(ttlSeconds: Int(d.components.seconds)))
            guard let token = reply.token else { throw WeftError(.protocolError, "the control plane sent no token") }
            if output != .table { return try output.emit(token) }
            print("token:   \(token.token)")
            print("expires: \(ISO8601DateFormatter().string(from: token.expires))")
            print("ca pin:  \(token.caPin)")
            print("join a node with:")
            print("  weft agent --control CONTROL-HOST:\(ControlAPI.defaultPort) --token \(token.token) --ca-pin \(token.caPin)")
        } catch {
            fail(error)
        }
    }
}

struct GetAgents: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "agents", abstract: "Agents known to the control plane, and whether their config is in sync.")

    @Option(name: .shortAndLong, help: "table, json or yaml.") var output: OutputFormat = .table
    @OptionGroup var control: ControlSocketOption

    func run() throws {
        let f = ISO8601DateFormatter()
        AgentTable.show(control: control, output: output,
                        header: ["NODE", "CONNECTED", "ADDRESS", "VERSION", "ACKED", "SYNC", "NACKED", "LAST SEEN"]) { a in
            [a.node, a.connected ? "yes" : "no", a.address ?? "-", a.agentVersion ?? "-", a.ackedVersion.map(String.init) ?? "-",
             a.inSync ? "SYNCED" : "STALE (control at \(a.currentVersion))",
             a.nackedVersion.map { "\($0): \(a.nackReason ?? "")" } ?? "-", f.string(from: a.lastSeen)]
        }
    }
}

/// Istio's name for the same view: which config version each agent (proxy) runs and whether it
/// is in sync with the control plane.
struct ProxyStatus: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "proxy-status", abstract: "Each agent's config sync with the control plane (as `istioctl proxy-status`).")

    @Option(name: .shortAndLong, help: "table, json or yaml.") var output: OutputFormat = .table
    @OptionGroup var control: ControlSocketOption

    func run() throws {
        AgentTable.show(control: control, output: output,
                        header: ["NAME", "CLUSTER", "CDS/LDS/RDS", "VERSION", "CONTROL VERSION", "AGENT", "LAST NACK"]) { a in
            let sync = !a.connected ? "DISCONNECTED" : a.inSync ? "SYNCED" : (a.nackedVersion == a.currentVersion ? "NACKED" : "STALE")
            return [a.node, "weft", sync, a.ackedVersion.map(String.init) ?? "-", String(a.currentVersion), a.agentVersion ?? "-",
                    a.nackedVersion.map { "v\($0): \(a.nackReason ?? "")" } ?? "-"]
        }
    }
}

/// The control plane's agents as a table (or JSON/YAML).
enum AgentTable {
    static func show(control: ControlSocketOption, output: OutputFormat, header: [String], row: (AgentSyncStatus) -> [String]) {
        do {
            let agents = try AgentClient.control(control.path).call(.listAgents).agents ?? []
            if output != .table { return try output.emit(agents) }
            print(TextTable.render([header] + agents.map(row)), terminator: "")
        } catch {
            fail(error)
        }
    }

}
