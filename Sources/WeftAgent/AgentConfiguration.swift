import Glibc
import Foundation
import NIOCore
import WeftCore
import WeftProxy
import WeftTelemetry

/// Everything `weft agent` is started with. A Sendable value with documented defaults.
public struct AgentConfiguration: Sendable {
    /// Root-only Unix socket of the local API.
    public var socketPath = WeftDefaults.agentSocket
    /// Host bridge that pod veths attach to; its address is the pods' gateway.
    public var bridge = WeftDefaults.bridge
    /// Block pod addresses come from (first host = gateway).
    public var podCIDR = CIDR(WeftDefaults.podCIDR)!
    /// IPv6 prefix for pod addresses (nil: IPv4 only). A pod's IPv6 address ends in its
    /// IPv4 address; the bridge is prefix::1.
    public var podCIDRv6: CIDR? = CIDR(WeftDefaults.podCIDRv6)
    public var stateDirectory = WeftDefaults.stateDirectory
    /// Virtual IPs for services, and their IPv6 twins (nil: no IPv6 VIPs).
    public var serviceCIDR = CIDR(WeftDefaults.serviceCIDR)!
    public var serviceCIDRv6: CIDR? = CIDR(WeftDefaults.serviceCIDRv6)
    /// Capture ports and the proxy's SO_MARK; handed to `weft run` so rules and proxy agree.
    public var capture = CaptureSettings()
    /// Resolver for names outside the mesh, reached from the host's netns (nil: those names
    /// get SERVFAIL). Default: the first nameserver of /etc/resolv.conf.
    public var dnsUpstream: OriginalDestination? = AgentConfiguration.systemResolver()

    /// The first `nameserver` line of /etc/resolv.conf, port 53.
    public static func systemResolver(path: String = "/etc/resolv.conf") -> OriginalDestination? {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n") {
            let words = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            if words.count >= 2, words[0] == "nameserver", let ip = IPAddress(String(words[1].split(separator: "%")[0])) {
                return OriginalDestination(ip: ip, port: 53)
            }
        }
        return nil
    }

    /// Watched directory of VirtualService/DestinationRule YAML files (nil: none).
    public var configDirectory: String?

    /// Retry budget of every workload proxy, per destination service.
    public var retryBudget = RetryBudget.Settings()

    /// Upstream connect timeout for L4 forwarding.
    public var connectTimeout: TimeAmount = .seconds(10)
    /// On SIGTERM: how long open connections get to finish before they are closed.
    public var drainTimeout: Duration = .seconds(10)
    /// HTTP/1.1 from apps: a whole request head within this of the connection being idle (nil: no limit).
    public var requestHeadersTimeout: Duration? = .seconds(60)
    /// Open connections per workload and direction (outbound; inbound + tunnel); nil: no limit.
    public var maxConnectionsPerWorkload: Int? = 4096
    /// Proxied connections and HTTP exchanges idle this long are closed; nil: never.
    public var idleTimeout: Duration? = .seconds(3600)
    /// HTTP request bodies larger than this get 413; nil: no limit.
    public var maxRequestBodyBytes: Int?

    /// Workload identities and the mesh tunnel (mTLS between meshed workloads). Off only
    /// with `--no-mtls` (for comparisons): then nothing has an identity.
    public var mtls = true
    public var trustDomain = "weft.local"
    /// Operator-supplied CA (both or neither); default: a root made in <state>/ca.
    public var caCertPath: String?
    public var caKeyPath: String?
    public var caBundlePath: String?
    public var certificateLifetime: Duration = .seconds(24 * 3600)

    /// The control plane this agent takes its config from (nil: the agent is its own).
    public var control: ControlLinkConfiguration?

    /// Prometheus `/metrics` (Istio's port 15090, every interface so Prometheus can scrape
    /// it; nil: off) and the admin endpoints (loopback only by default; nil: off).
    public var metricsAddress: String? = "0.0.0.0:15090"
    public var adminAddress: String? = "127.0.0.1:15000"
    /// Access log: "stdout" or a file (nil: off), JSON or Envoy's text format.
    public var accessLog: String?
    public var accessLogFormat: AccessLog.Format = .json
    /// OTLP/gRPC collector for spans, HOST:PORT (nil: no tracing), and the share of new
    /// traces sampled, in percent (Istio's default: 1).
    public var tracingCollector: String?
    /// TLS to the collector (`--tracing-collector-tls`, `-ca`, `-cert`, `-key`); nil: plaintext.
    public var tracingCollectorTLS: CollectorTLS?
    public var traceSamplingPercent: Double = 1

    public init() {}
}

/// `weft agent --control HOST:PORT [--token T --ca-pin sha256:…] [--node-name N]`.
public struct ControlLinkConfiguration: Sendable {
    public var host: String
    public var port: Int
    /// Needed only to join (no node certificate in the state directory yet).
    public var token: String?
    public var caPin: String?
    public var node: String
    /// This host's address other hosts route this node's pod block through (nil: pods here
    /// are not reachable from other hosts).
    public var nodeAddress: IPAddress?

    public init(host: String, port: Int, token: String?, caPin: String?, node: String) {
        self.host = host
        self.port = port
        self.token = token
        self.caPin = caPin
        self.node = node
    }

    /// Further control planes serving the same store (`--control a,b`), tried in turn.
    public var alternates: [(host: String, port: Int)] = []

    /// Every control plane, the first one first.
    public var endpoints: [(host: String, port: Int)] { [(host, port)] + alternates }

    public var address: String { endpoints.map { $0.host.contains(":") ? "[\($0.host)]:\($0.port)" : "\($0.host):\($0.port)" }.joined(separator: ",") }
}
