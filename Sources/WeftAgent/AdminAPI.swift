import Foundation
import Logging
import NIOHTTP1
import WeftCore

/// The agent's admin endpoints (127.0.0.1:15000 by default, like Envoy's admin port) and
/// its Prometheus endpoint (15090). Read-only except `/logging`. No secrets: certificates
/// are public halves only.
///
/// - `/ready`: 200 LIVE once the agent serves
/// - `/config_dump`: the config in force (documents and version), workloads, services, the
///   control-plane link
/// - `/clusters`: every service's endpoints with health, ejection, circuit-breaker state and
///   requests in flight (`?format=json` for JSON)
/// - `/certs`: workload certificates (identity, serial, validity, renewal time)
/// - `/stats`: per-workload counters as `workload.NAME.COUNTER: value`; `/stats/prometheus`
///   is `/metrics`
/// - `/logging`: the log level; `POST /logging?level=debug` changes it at run time
struct AdminAPI: Sendable {
    let registry: WorkloadRegistry
    let metrics: AgentMetrics
    let control: ControlLink?

    static let help = """
        weft agent admin
          /ready                 200 LIVE when serving
          /config_dump           config in force, workloads, services, control plane (JSON)
          /clusters              endpoints per service: health, ejection, breaker, in flight (?format=json)
          /certs                 workload certificates (JSON)
          /stats                 per-workload counters; /stats/prometheus = /metrics
          /logging               log level; POST /logging?level=LEVEL changes it

        """

    func respond(method: HTTPMethod, uri: String) async -> HTTPReply {
        let parts = uri.split(separator: "?", maxSplits: 1)
        let path = parts.first.map(String.init) ?? "/"
        let query = Self.query(parts.count > 1 ? String(parts[1]) : "")
        switch (method, path) {
        case (.GET, "/"), (.GET, "/help"):
            return HTTPReply(Self.help)
        case (.GET, "/ready"):
            return HTTPReply("LIVE\n")
        case (.GET, "/metrics"), (.GET, "/stats/prometheus"):
            return await prometheus()
        case (.GET, "/config_dump"):
            return .json(await configDump())
        case (.GET, "/clusters"):
            let clusters = await self.clusters()
            return query["format"] == "json" ? .json(clusters) : HTTPReply(Self.text(clusters))
        case (.GET, "/certs"):
            do {
                var reply = try await registry.certificates()
                reply.workloads = reply.workloads.map { var c = $0; c.chainPEM = []; return c }
                return .json(reply)
            } catch {
                return HTTPReply(.notFound, "\(error)\n")
            }
        case (.GET, "/stats"):
            return HTTPReply(await stats())
        case (.GET, "/logging"):
            return HTTPReply("level: \(RuntimeLogLevel.shared.level.rawValue)\n")
        case (.POST, "/logging"):
            guard let text = query["level"], let level = Logger.Level(rawValue: text) else {
                return HTTPReply(.badRequest, "POST /logging?level=LEVEL, LEVEL one of trace, debug, info, notice, warning, error, critical\n")
            }
            RuntimeLogLevel.shared.level = level
            return HTTPReply("level: \(level.rawValue)\n")
        case (_, "/logging"):
            return HTTPReply(.methodNotAllowed, "GET or POST\n")
        default:
            return HTTPReply(.notFound, "no admin endpoint \(path)\n\n" + Self.help)
        }
    }

    /// `/metrics` on the metrics port.
    func prometheus() async -> HTTPReply {
        let workloads = await registry.list()
        let services = await registry.services()
        let version = await registry.currentConfig().version
        let certificates = (try? await registry.certificates().workloads) ?? []
        let connected = await control?.currentStatus.connected
        let text = await metrics.scrape(workloads: workloads, services: services, configVersion: version, certificates: certificates,
                                        controlConnected: connected)
        return HTTPReply(contentType: "text/plain; version=0.0.4; charset=utf-8", text)
    }

    struct ConfigDump: Encodable {
        var configVersion: Int
        var documents: [String]
        var workloads: [WorkloadSpec]
        var services: [ServiceStatus]
        var control: ControlLinkStatus?
    }

    func configDump() async -> ConfigDump {
        let config = await registry.currentConfig()
        return ConfigDump(configVersion: config.version, documents: config.documents, workloads: await registry.list().map(\.spec),
                          services: await registry.services(), control: await control?.currentStatus)
    }

    struct Cluster: Encodable {
        struct Endpoint: Encodable {
            var workload: String
            var address: String
            /// healthy, unhealthy (active check) or ejected (outlier detection).
            var health: String
            var activeRequests: Int
            var labels: [String: String]
        }

        var service: String
        var virtualIP: String
        var circuitBreaker: String?
        var endpoints: [Endpoint]
    }

    func clusters() async -> [Cluster] {
        let inflight = registry.directory.inflightRequests()
        return await registry.services().map { s in
            Cluster(service: s.key.fqdn, virtualIP: "\(s.vip)", circuitBreaker: s.breaker, endpoints: s.endpoints.map { e in
                let health = s.ejected.contains(e.workload) ? "ejected" : s.unhealthy.contains(e.workload) ? "unhealthy" : "healthy"
                return Cluster.Endpoint(workload: e.workload, address: "\(e.ip)", health: health, activeRequests: inflight[e.workload] ?? 0,
                                        labels: e.labels)
            })
        }
    }

    /// Envoy's `/clusters` text shape: `SERVICE::ENDPOINT::FIELD::VALUE`.
    static func text(_ clusters: [Cluster]) -> String {
        var lines: [String] = []
        for c in clusters {
            lines.append("\(c.service)::circuit_breaker::\(c.circuitBreaker ?? "none")")
            for e in c.endpoints {
                let id = "\(c.service)::\(e.address)"
                lines += ["\(id)::workload::\(e.workload)", "\(id)::health_flags::\(e.health)", "\(id)::rq_active::\(e.activeRequests)"]
            }
        }
        return lines.joined(separator: "\n") + "\n"
    }

    func stats() async -> String {
        var lines: [String] = []
        for w in await registry.list() {
            let mirror = Mirror(reflecting: w.counters)
            for child in mirror.children {
                guard let name = child.label, let value = child.value as? Int else { continue }
                lines.append("workload.\(w.spec.name).\(name): \(value)")
            }
        }
        return lines.joined(separator: "\n") + "\n"
    }

    static func query(_ text: String) -> [String: String] {
        var out: [String: String] = [:]
        for pair in text.split(separator: "&") {
            let kv = pair.split(separator: "=", maxSplits: 1)
            guard let k = kv.first else { continue }
            out[String(k).removingPercentEncoding ?? String(k)] = kv.count > 1 ? (String(kv[1]).removingPercentEncoding ?? String(kv[1])) : ""
        }
        return out
    }
}

/// The log level every logger of the process follows, changeable at run time (`/logging`).
public final class RuntimeLogLevel: Sendable {
    public static let shared = RuntimeLogLevel()
    private let box = NIOLockedLevel()

    public var level: Logger.Level {
        get { box.get() }
        set { box.set(newValue) }
    }
}

import Synchronization

final class NIOLockedLevel: Sendable {
    private let value = Mutex<Logger.Level>(.info)
    func get() -> Logger.Level { value.withLock { $0 } }
    func set(_ l: Logger.Level) { value.withLock { $0 = l } }
}

/// A stderr log handler whose level is RuntimeLogLevel's.
public struct RuntimeLevelLogHandler: LogHandler {
    private var inner: StreamLogHandler

    public init(label: String) {
        inner = StreamLogHandler.standardError(label: label)
    }

    public var logLevel: Logger.Level {
        get { RuntimeLogLevel.shared.level }
        set { RuntimeLogLevel.shared.level = newValue }
    }

    public var metadata: Logger.Metadata {
        get { inner.metadata }
        set { inner.metadata = newValue }
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { inner[metadataKey: key] }
        set { inner[metadataKey: key] = newValue }
    }

    public func log(event: LogEvent) {
        inner.log(event: event)
    }
}
