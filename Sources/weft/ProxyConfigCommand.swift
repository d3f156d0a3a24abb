import ArgumentParser
import Foundation
import WeftAgent
import WeftConfig
import WeftControl
import WeftCore

/// `weft proxy-config WORKLOAD listeners|routes|clusters|endpoints|secrets` (istioctl's
/// proxy-config, for one workload's proxy).
struct ProxyConfig: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "proxy-config", abstract: "What one workload's proxy runs with: listeners, routes, clusters, endpoints or secrets.")

    enum Kind: String, ExpressibleByArgument, CaseIterable {
        case listeners, routes, clusters, endpoints, secrets
    }

    @Argument(help: "The workload (name or netns).") var workload: String
    @Argument(help: "listeners, routes, clusters, endpoints or secrets.") var kind: Kind
    @Option(name: .shortAndLong, help: "table, json or yaml.") var output: OutputFormat = .table
    @OptionGroup var agent: AgentSocketOption

    func run() throws {
        do {
            let client = AgentClient(socketPath: agent.path)
            let workloads = try client.call(.listWorkloads).workloads ?? []
            guard let w = workloads.first(where: { $0.spec.name == workload || $0.spec.netns.rawValue == workload }) else {
                throw WeftError(.notFound, "no workload named \(workload) on this agent",
                                hint: "weft get workloads lists them: \(workloads.map(\.spec.name).joined(separator: ", "))")
            }
            let documents = try client.call(.getConfig).config?.documents ?? []
            let resources = ConfigParser.parse(yaml: documents.joined(separator: "\n---\n"), file: "config in force").resources
            switch kind {
            case .listeners:
                let capture = try client.call(.ping).capture ?? CaptureSettings()
                let certs = try? client.call(.listCertificates).certificates
                let pa = resources.compactMap { if case .peerAuthentication(let p) = $0 { p } else { nil } }
                let rows = ProxyConfigView.listeners(w, capture: capture, hasIdentity: certs?.workloads.contains { $0.workload == w.spec.name } ?? false,
                                                     peerAuthentication: pa)
                try show(rows, ["ADDRESS", "PORT", "KIND", "DETAIL"]) { [$0.address, "\($0.port)", $0.kind, $0.detail] }
            case .routes:
                try show(ProxyConfigView.routes(resources), ["HOST", "ROUTE", "MATCH", "DESTINATIONS", "TIMEOUT", "RETRIES", "VIRTUAL SERVICE"]) {
                    [$0.host, $0.name, $0.match, $0.destinations, $0.timeout, $0.retries, $0.virtualService]
                }
            case .clusters:
                let services = try client.call(.listServices).services ?? []
                try show(ProxyConfigView.clusters(services, resources: resources),
                         ["SERVICE", "VIP", "PORTS", "ENDPOINTS", "LOAD BALANCER", "BREAKER", "DESTINATION RULE"]) {
                    [$0.service, $0.virtualIP, $0.ports, "\($0.endpoints)", $0.loadBalancer, $0.circuitBreaker, $0.destinationRule]
                }
            case .endpoints:
                let services = try client.call(.listServices).services ?? []
                try show(ProxyConfigView.endpoints(services), ["ENDPOINT", "SERVICE", "WORKLOAD", "STATUS", "LABELS"]) {
                    [$0.endpoint, $0.service, $0.workload, $0.status, $0.labels]
                }
            case .secrets:
                let certs: CertificatesReply?
                do { certs = try client.call(.listCertificates).certificates } catch let e as WeftError where e.code == .notFound { certs = nil }
                let f = ISO8601DateFormatter()
                try show(ProxyConfigView.secrets(certs, workload: w.spec.name), ["RESOURCE", "IDENTITY", "SERIAL", "NOT AFTER", "RENEW AT"]) {
                    [$0.resource, $0.identity, $0.serial, f.string(from: $0.notAfter), f.string(from: $0.renewAt)]
                }
            }
        } catch {
            fail(error)
        }
    }

    func show<T: Encodable>(_ rows: [T], _ header: [String], _ cells: (T) -> [String]) throws {
        if output == .table {
            print(TextTable.render([header] + rows.map(cells)), terminator: "")
        } else {
            try output.emit(rows)
        }
    }
}
