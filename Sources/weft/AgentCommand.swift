import Glibc
import ArgumentParser
import Foundation
import Logging
import NIOCore
import ServiceLifecycle
import WeftAgent
import WeftConfig
import WeftControl
import WeftCore
import WeftTelemetry

struct AgentCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "agent",
        abstract: "Run the node agent (foreground; systemd Type=notify).",
        discussion: "Hosts one workload proxy per attached network namespace and serves the local API."
    )

    @Option(help: "Local API socket (root only).") var socket: String = WeftDefaults.agentSocket
    @Option(help: "Host bridge for pod veths.") var bridge: String = WeftDefaults.bridge
    @Option(help: "IPv4 block for pod addresses; the first address is the gateway.") var podCidr: String = WeftDefaults.podCIDR
    @Option(help: "IPv6 prefix for pod addresses, /64 to /96 (\"none\": IPv4 only).") var podCidr6: String = WeftDefaults.podCIDRv6
    @Option(help: "IPv4 block for service virtual IPs.") var serviceCidr: String = WeftDefaults.serviceCIDR
    @Option(help: "IPv6 prefix (/96) for service virtual IPs (\"none\": no IPv6 VIPs).") var serviceCidr6: String = WeftDefaults.serviceCIDRv6
    @Option(help: "Resolver for names outside the mesh, IP[:PORT] (default: first nameserver in /etc/resolv.conf; \"none\": answer SERVFAIL).")
    var dnsUpstream: String?
    @Flag(help: "Do not capture DNS nor run the per-workload DNS proxy.") var noDns = false
    @Option(help: "NFQUEUE number for new non-TCP flows leaving workload namespaces (the agent gives each a verdict from MeshConfig's outboundTrafficPolicy), or none: UDP and ICMP leave unchecked.")
    var egressQueue: String = "15009"
    @Flag(help: "Keep every capability the agent was started with (default: keep only CAP_NET_ADMIN and CAP_SYS_ADMIN, drop the rest at start).")
    var keepCapabilities = false
    @Option(help: "State directory.") var stateDir: String = WeftDefaults.stateDirectory
    @Option(help: "Watched directory of Istio YAML (VirtualService, DestinationRule); its *.yaml/*.yml files, as a whole, are applied on every change.")
    var configDir: String?
    @Option(help: "SO_MARK on the proxy's sockets (must match the capture rules).") var proxyMark: UInt32 = 0x539
    @Option(help: "Upstream connect timeout in milliseconds.") var connectTimeoutMs: Int64 = 10_000
    @Option(help: "On SIGTERM, how long open connections get to finish (in-flight requests are answered, HTTP/2 gets GOAWAY) before the agent closes them, e.g. 10s, 500ms, 0s.")
    var drainTimeout: String = "10s"
    @Option(help: "HTTP/1.1 from apps: a connection must deliver a whole request head within this of being idle (accepted, or its last response sent), else 408 (bytes had come) or a quiet close (none had): slowloris and idle keep-alive. 0s: no limit.")
    var requestHeadersTimeout: String = "60s"
    @Option(help: "Open connections each workload's proxy takes per direction (the app's outbound; inbound and tunnel together) before refusing new ones with a reset; 0: no limit. A flood from or to one workload cannot take the agent's file descriptors from the others.")
    var maxConnectionsPerWorkload: Int = 4096
    @Option(help: "Close a proxied connection, or an HTTP exchange, when no byte has moved either way for this long (checked once per period, so after one to two periods): idle TCP connections and slow-read clients. 0s: never.")
    var idleTimeout: String = "1h"
    @Option(help: "HTTP requests whose body is larger get 413 from the mesh (a declared Content-Length at once; a streamed body when it crosses the limit, or a reset once the response has started). 0: no limit (bodies are streamed, never buffered).")
    var maxRequestBodyBytes: Int = 0
    @Option(help: "Retry budget: retries allowed per request sent to a service, over a 10 s window.") var retryBudgetRatio: Double = 0.2
    @Option(help: "Retry budget floor: retries per second always allowed to a service.") var retryBudgetMinPerSecond: Double = 3
    @Flag(help: "No retry budget: every configured retry is attempted (for comparison only; retries can then multiply across hops).")
    var noRetryBudget = false
    @Option(help: "SPIFFE trust domain of workload identities (spiffe://TRUST-DOMAIN/ns/NAMESPACE/sa/ACCOUNT).")
    var trustDomain: String = "weft.local"
    @Option(help: "Operator-supplied CA certificate (PEM: the signing certificate, then its chain); default: a root made in STATE-DIR/ca.")
    var caCert: String?
    @Option(help: "Private key of --ca-cert (PEM, mode 0600).") var caKey: String?
    @Option(help: "Roots to trust (PEM), e.g. old and new root during a rotation; default: the root ending --ca-cert.")
    var caBundle: String?
    @Option(help: "Lifetime of workload certificates (e.g. 24h, 2m; 1m to 90 days); renewed at half life.")
    var certLifetime: String = "24h"
    @Flag(help: "No workload identities and no mesh tunnel: meshed workloads talk in plaintext (for comparisons only).")
    var noMtls = false
    @Option(help: "Take config from the control plane at HOST[:PORT] (default port 15012) instead of being its own; several, comma-separated, are tried in turn.")
    var control: String?
    @Option(help: "Join token for --control (from `weft control token create`); needed only until the node has joined.")
    var token: String?
    @Option(help: "sha256:HEX of the control plane's root certificate, checked before the token is sent.")
    var caPin: String?
    @Option(help: "This node's name in the mesh (default: the host name).") var nodeName: String?
    @Option(help: "With --control: this host's address that other hosts route this node's pod block through (IPv4).")
    var nodeAddress: String?
    @Option(help: "trace, debug, info, notice, warning, error (changeable at run time: POST /logging?level=… on the admin port).")
    var logLevel: String = "info"
    @Option(help: "Prometheus /metrics, IP:PORT (\"none\": off).") var metricsAddress: String = "0.0.0.0:15090"
    @Option(help: "Admin endpoints (/ready, /config_dump, /clusters, /certs, /stats, /logging), IP:PORT (\"none\": off).")
    var adminAddress: String = "127.0.0.1:15000"
    @Option(help: "Access log: one line per request or TCP connection to \"stdout\" or a file (\"off\": none).") var accessLog: String = "off"
    @Option(help: "Access log format: json, or text (Envoy's default format).") var accessLogFormat: String = "json"
    @Option(help: "Send spans to this OTLP/gRPC collector, HOST:PORT (W3C trace context is propagated and started when it is set).")
    var tracingCollector: String?
    @Flag(help: "Export spans over TLS (the collector's certificate verified against the system's trust store, or --tracing-collector-ca).")
    var tracingCollectorTls = false
    @Option(help: "PEM file of the CA certificates the collector's certificate must chain to (implies --tracing-collector-tls).")
    var tracingCollectorCa: String?
    @Option(help: "PEM client certificate for a collector that requires one (mTLS; with --tracing-collector-key).")
    var tracingCollectorCert: String?
    @Option(help: "PEM private key of --tracing-collector-cert (mode 600).")
    var tracingCollectorKey: String?
    @Option(help: "Percent of new traces sampled (0-100; a caller's sampled flag is always followed).") var traceSampling: Double = 1

    /// "host", "host:port", "[v6]:port", "v6" → (host, port).
    static func parseControl(_ text: String) throws -> (String, Int) {
        var host = text, port = ControlAPI.defaultPort
        if text.hasPrefix("["), let close = text.firstIndex(of: "]") {
            host = String(text[text.index(after: text.startIndex)..<close])
            let rest = text[text.index(after: close)...]
            if rest.hasPrefix(":") {
                guard let p = Int(rest.dropFirst()), (1...65535).contains(p) else { throw WeftError(.invalidArgument, "--control \(text): bad port") }
                port = p
            }
        } else if text.filter({ $0 == ":" }).count == 1, let colon = text.firstIndex(of: ":") {
            host = String(text[..<colon])
            guard let p = Int(text[text.index(after: colon)...]), (1...65535).contains(p) else {
                throw WeftError(.invalidArgument, "--control \(text): bad port")
            }
            port = p
        }
        guard !host.isEmpty, host.allSatisfy({ $0.isLetter || $0.isNumber || "-.:".contains($0) }) else {
            throw WeftError(.invalidArgument, "--control \(text): expected HOST[:PORT]")
        }
        return (host, port)
    }

    /// "10.0.0.2", "10.0.0.2:5353", "[fd00::1]:53", "fd00::1".
    static func parseHostPort(_ text: String, defaultPort: UInt16, flag: String) throws -> OriginalDestination {
        var host = text, port = defaultPort
        if text.hasPrefix("["), let close = text.firstIndex(of: "]") {
            host = String(text[text.index(after: text.startIndex)..<close])
            let rest = text[text.index(after: close)...]
            if rest.hasPrefix(":") {
                guard let p = UInt16(rest.dropFirst()), p > 0 else { throw WeftError(.invalidArgument, "\(flag) \(text): bad port") }
                port = p
            }
        } else if text.filter({ $0 == ":" }).count == 1, let colon = text.firstIndex(of: ":") {
            host = String(text[..<colon])
            guard let p = UInt16(text[text.index(after: colon)...]), p > 0 else { throw WeftError(.invalidArgument, "\(flag) \(text): bad port") }
            port = p
        }
        guard let ip = IPAddress(host) else {
            throw WeftError(.invalidArgument, "\(flag) \(text): expected an IP address, optionally with :PORT")
        }
        return OriginalDestination(ip: ip, port: port)
    }

    func run() async throws {
        do {
            try requireRoot("weft agent (it enters network namespaces and manages the pod bridge)")
            guard let level = Logger.Level(rawValue: logLevel) else {
                throw WeftError(.invalidArgument, "--log-level \(logLevel): use trace, debug, info, notice, warning or error")
            }
            guard let cidr = CIDR(podCidr) else {
                throw WeftError(.invalidArgument, "--pod-cidr \(podCidr): not a CIDR (e.g. 10.231.0.0/16)")
            }
            guard !bridge.isEmpty, bridge.utf8.count <= 15 else {
                throw WeftError(.invalidArgument, "--bridge \(bridge): interface names are 1-15 characters")
            }
            var config = AgentConfiguration()
            if podCidr6 == "none" {
                config.podCIDRv6 = nil
            } else {
                guard let v6 = CIDR(podCidr6), v6.family == .v6, (8...96).contains(v6.prefixLength) else {
                    throw WeftError(.invalidArgument, "--pod-cidr6 \(podCidr6): expected an IPv6 prefix of /8 to /96 (e.g. fd77:7765:6674::/64) or none")
                }
                config.podCIDRv6 = v6
            }
            guard let svc = CIDR(serviceCidr), svc.family == .v4, svc.prefixLength <= 30 else {
                throw WeftError(.invalidArgument, "--service-cidr \(serviceCidr): expected an IPv4 block of /30 or larger (e.g. 240.240.0.0/16)")
            }
            config.serviceCIDR = svc
            if serviceCidr6 == "none" {
                config.serviceCIDRv6 = nil
            } else {
                guard let svc6 = CIDR(serviceCidr6), svc6.family == .v6, svc6.prefixLength <= 96 else {
                    throw WeftError(.invalidArgument, "--service-cidr6 \(serviceCidr6): expected an IPv6 prefix of /96 or shorter, or none")
                }
                config.serviceCIDRv6 = svc6
            }
            if noDns { config.capture.dnsPort = nil }
            config.capture.egressQueue = try EgressQueueFlag.parse(egressQueue)
            if let dnsUpstream {
                config.dnsUpstream = dnsUpstream == "none" ? nil : try Self.parseHostPort(dnsUpstream, defaultPort: 53, flag: "--dns-upstream")
            }
            config.socketPath = socket
            config.bridge = bridge
            for (flag, value) in [("--metrics-address", metricsAddress), ("--admin-address", adminAddress)] where value != "none" {
                _ = try HTTPEndpoint.parse(value, flag: flag)
            }
            config.metricsAddress = metricsAddress == "none" ? nil : metricsAddress
            guard let format = AccessLog.Format(rawValue: accessLogFormat) else {
                throw WeftError(.invalidArgument, "--access-log-format \(accessLogFormat): use json or text")
            }
            config.accessLogFormat = format
            config.accessLog = accessLog == "off" ? nil : accessLog
            guard (0...100).contains(traceSampling) else {
                throw WeftError(.invalidArgument, "--trace-sampling \(traceSampling): a percentage, 0 to 100")
            }
            if let collector = tracingCollector {
                guard collector.split(separator: ":").count >= 2, let port = Int(collector.split(separator: ":").last ?? ""), (1...65535).contains(port) else {
                    throw WeftError(.invalidArgument, "--tracing-collector \(collector): expected HOST:PORT (e.g. otel-collector:4317)")
                }
            }
            config.tracingCollector = tracingCollector
            if tracingCollectorTls || tracingCollectorCa != nil || tracingCollectorCert != nil || tracingCollectorKey != nil {
                guard tracingCollector != nil else {
                    throw WeftError(.invalidArgument, "--tracing-collector-tls/-ca/-cert/-key need --tracing-collector HOST:PORT")
                }
                do {
                    config.tracingCollectorTLS = try CollectorTLS(caFile: tracingCollectorCa, certFile: tracingCollectorCert,
                                                                  keyFile: tracingCollectorKey).validate()
                } catch let error as CollectorTLSError {
                    throw WeftError(.invalidArgument, error.description)
                }
            }
            config.traceSamplingPercent = traceSampling
            config.adminAddress = adminAddress == "none" ? nil : adminAddress
            config.podCIDR = cidr
            config.stateDirectory = stateDir
            config.configDirectory = configDir.map { URL(fileURLWithPath: $0).standardizedFileURL.path }
            config.capture.proxyMark = proxyMark
            config.connectTimeout = .milliseconds(connectTimeoutMs)
            guard let drain = IstioDuration.parse(drainTimeout) ?? (drainTimeout == "0" ? .zero : nil), drain <= .seconds(3600) else {
                throw WeftError(.invalidArgument, "--drain-timeout \(drainTimeout): expected a duration up to 1h (e.g. 10s, 500ms, 0s)")
            }
            config.drainTimeout = drain
            guard let headers = IstioDuration.parse(requestHeadersTimeout) ?? (requestHeadersTimeout == "0" ? .zero : nil), headers <= .seconds(86400) else {
                throw WeftError(.invalidArgument, "--request-headers-timeout \(requestHeadersTimeout): expected a duration up to 24h (e.g. 60s, 500ms), or 0s for no limit")
            }
            config.requestHeadersTimeout = headers == .zero ? nil : headers
            guard maxConnectionsPerWorkload >= 0 else {
                throw WeftError(.invalidArgument, "--max-connections-per-workload \(maxConnectionsPerWorkload): expected 0 (no limit) or more")
            }
            config.maxConnectionsPerWorkload = maxConnectionsPerWorkload == 0 ? nil : maxConnectionsPerWorkload
            guard let idle = IstioDuration.parse(idleTimeout) ?? (idleTimeout == "0" ? .zero : nil), idle <= .seconds(7 * 86400) else {
                throw WeftError(.invalidArgument, "--idle-timeout \(idleTimeout): expected a duration up to 168h (e.g. 1h, 300s, 500ms), or 0s for never")
            }
            config.idleTimeout = idle == .zero ? nil : idle
            guard maxRequestBodyBytes >= 0 else {
                throw WeftError(.invalidArgument, "--max-request-body-bytes \(maxRequestBodyBytes): expected 0 (no limit) or more")
            }
            config.maxRequestBodyBytes = maxRequestBodyBytes == 0 ? nil : maxRequestBodyBytes
            guard (0...10).contains(retryBudgetRatio), retryBudgetMinPerSecond >= 0 else {
                throw WeftError(.invalidArgument, "--retry-budget-ratio must be within 0...10 and --retry-budget-min-per-second at least 0")
            }
            guard let lifetime = IstioDuration.parse(certLifetime), lifetime >= .seconds(60), lifetime <= .seconds(90 * 86400) else {
                throw WeftError(.invalidArgument, "--cert-lifetime \(certLifetime): expected a duration from 1m to 90 days (e.g. 2m, 24h)")
            }
            guard (caCert == nil) == (caKey == nil) else {
                throw WeftError(.invalidArgument, "--ca-cert and --ca-key go together (the CA's certificate and its private key)")
            }
            config.certificateLifetime = lifetime
            config.trustDomain = trustDomain
            config.caCertPath = caCert
            config.caKeyPath = caKey
            config.caBundlePath = caBundle
            config.mtls = !noMtls
            if let control {
                guard configDir == nil else {
                    throw WeftError(.invalidArgument, "--config-dir and --control exclude each other: with a control plane, config is applied there")
                }
                guard caCert == nil, caBundle == nil, certLifetime == "24h", trustDomain == "weft.local" else {
                    throw WeftError(.invalidArgument, "--ca-cert, --ca-key, --ca-bundle, --cert-lifetime and --trust-domain are the control plane's with --control",
                                    hint: "set them on `weft control` (its CA signs every workload of the mesh)")
                }
                let all = try control.split(separator: ",").map { try Self.parseControl(String($0)) }
                guard let (host, port) = all.first else { throw WeftError(.invalidArgument, "--control: expected HOST[:PORT][,HOST[:PORT]...]") }
                if let caPin {
                    let hex = caPin.lowercased().hasPrefix("sha256:") ? String(caPin.dropFirst(7)) : ""
                    guard hex.count == 64, hex.allSatisfy(\.isHexDigit) else {
                        throw WeftError(.invalidArgument, "--ca-pin \(caPin): expected sha256: and 64 hex digits")
                    }
                }
                guard (token == nil) == (caPin == nil) else {
                    throw WeftError(.invalidArgument, "--token and --ca-pin go together (the pin proves the control plane before the token is sent)")
                }
                var hostname = [CChar](repeating: 0, count: 256)
                gethostname(&hostname, hostname.count)
                let node = (nodeName ?? String(cString: hostname)).lowercased()
                try ControlPlane.checkNodeName(node)
                config.control = ControlLinkConfiguration(host: host, port: port, token: token, caPin: caPin?.lowercased(), node: node)
                config.control?.alternates = Array(all.dropFirst()).map { (host: $0.0, port: $0.1) }
                if let nodeAddress {
                    guard let ip = IPAddress(nodeAddress), ip.family == .v4 else {
                        throw WeftError(.invalidArgument, "--node-address \(nodeAddress): expected this host's IPv4 address")
                    }
                    config.control?.nodeAddress = ip
                }
            } else if token != nil || caPin != nil || nodeName != nil || nodeAddress != nil {
                throw WeftError(.invalidArgument, "--token, --ca-pin, --node-name and --node-address are for joining a control plane: add --control HOST[:PORT]")
            }
            config.retryBudget = .init(ratio: retryBudgetRatio, minPerSecond: retryBudgetMinPerSecond, enabled: !noRetryBudget)
            // Least privilege before anything starts: may re-execute this process with only
            // CAP_NET_ADMIN and CAP_SYS_ADMIN (see AgentPrivileges).
            try AgentPrivileges.enforce(keepAll: keepCapabilities, logger: Logger(label: "weft.agent"))
            AgentPrivileges.raiseOpenFileLimit()
            try await runService(label: "weft.agent", level: level) { AgentService(config: config, logger: $0) }
        } catch {
            fail(error)
        }
    }
}
