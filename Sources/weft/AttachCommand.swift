import Glibc
import ArgumentParser
import Foundation
import WeftAgent
import WeftControl
import WeftCore
import WeftNetns

/// `weft attach`: mesh a netns that already exists (its networking is left as it is).
struct AttachCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "attach", abstract: "Mesh an existing network namespace: start its proxy and capture its traffic.")

    @Option(help: "The network namespace (a name under /run/netns).") var netns: String
    @Option(help: "Service this workload serves.") var service: String
    @Option(help: "Mesh namespace of the service.") var namespace: String = "default"
    @Option(help: "Workload name (default: the netns name).") var name: String?
    @Option(help: "PORT[:TARGET][/PROTO] (repeatable).") var port: [String] = []
    @Option(help: "KEY=VALUE label (repeatable).") var label: [String] = []
    @Option(help: "Service account of the workload's identity (default: the service name).") var serviceAccount: String?
    @OptionGroup var agent: AgentSocketOption

    func run() throws {
        do {
            try requireRoot("weft attach")
            let netns = try NetnsName(self.netns)
            _ = try HostCommand.require("iptables-restore", package: "iptables")
            var spec = WorkloadSpec(name: name ?? netns.rawValue, netns: netns, service: try ServiceName(service),
                                    namespace: try MeshNamespace(namespace),
                                    ports: try port.map(PortMapping.init(parsing:)), labels: try ListParsing.labels(label), podIP: nil)
            spec.serviceAccount = try serviceAccount.map(ServiceAccountName.check)
            _ = try NetnsHandle(opening: netns)
            let client = AgentClient(socketPath: agent.path)
            let reply = try client.call(.attach(spec))
            do {
                try CaptureInstaller(netns: netns).apply(CaptureOptions(reply.capture ?? CaptureSettings()))
            } catch {
                _ = try? client.call(.detach(netns: netns, force: true))
                throw error
            }
            print("attached netns \(netns) as workload \(spec.name) (service \(spec.service))")
        } catch {
            fail(error)
        }
    }
}

/// `weft detach`: stop meshing a netns attached with `weft attach`; the netns stays.
struct DetachCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "detach", abstract: "Stop meshing a network namespace: remove its capture rules and proxy.")

    @Option(help: "The network namespace.") var netns: String
    @Flag(help: "Also detach a namespace that a running `weft run` owns (its traffic then leaves the mesh).") var force = false
    @OptionGroup var agent: AgentSocketOption

    func run() throws {
        do {
            try requireRoot("weft detach")
            let netns = try NetnsName(self.netns)
            var agentError: Error?
            do { _ = try AgentClient(socketPath: agent.path).call(.detach(netns: netns, force: force)) } catch { agentError = error }
            if let e = agentError as? WeftError, e.code == .permissionDenied { throw e }  // owned by weft run: leave everything
            // Rules go last: while the proxy was up they kept traffic from bypassing it.
            if NetnsManager.exists(netns) { try CaptureInstaller(netns: netns).remove() }
            if let agentError { throw agentError }
            print("detached netns \(netns)")
        } catch {
            fail(error)
        }
    }
}
