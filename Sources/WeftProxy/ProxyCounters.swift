import Synchronization
import WeftCore

/// One monotonically increasing figure, shared by reference so the hot path can hold it
/// directly. Relaxed ordering: each figure is exact, a snapshot of several is not atomic.
public final class Counter: Sendable {
    private let value = Atomic<Int>(0)

    public init() {}

    @inline(__always)
    public func add(_ n: Int) { _ = value.wrappingAdd(n, ordering: .relaxed) }

    public var current: Int { value.load(ordering: .relaxed) }
}

/// Per-workload traffic counters, updated from the workload's loop and read by the local
/// API from anywhere.
public final class ProxyCounters: Sendable {
    let connectionsInbound = Counter()
    let connectionsOutbound = Counter()
    let bytesInboundReceived = Counter()
    let bytesInboundSent = Counter()
    let bytesOutboundSent = Counter()
    let bytesOutboundReceived = Counter()
    let connectionErrors = Counter()
    let dnsAnswered = Counter()
    let dnsForwarded = Counter()
    let dnsMalformed = Counter()
    let httpRequests = Counter()
    let httpErrors = Counter()
    let protocolHTTP1 = Counter()
    let protocolHTTP2 = Counter()
    let protocolTLS = Counter()
    let protocolOpaque = Counter()
    let serverFirst = Counter()
    let httpRetries = Counter()
    let httpRetriesDenied = Counter()
    let httpRateLimited = Counter()
    let tunnelConnections = Counter()
    let tunnelRefused = Counter()
    let tunnelStreamsOut = Counter()
    let plaintextRefused = Counter()
    let authzDenied = Counter()
    let plaintextInbound = Counter()
    /// A gauge: tunnel TLS handshakes in progress.
    let tunnelHandshaking = Counter()
    /// A gauge: inbound requests with trace context being served now.
    let tracedInbound = Counter()
    /// Outbound requests without trace context made while a traced one was being served.
    let traceContextDropped = Counter()
    /// Connections refused because the workload's direction was at --max-connections-per-workload.
    let connectionsOverLimit = Counter()
    /// Egress flows by protocol (tcp, udp, icmp, other) × verdict (allowed, denied).
    let egress: [Counter] = (0..<8).map { _ in Counter() }
    static let egressProtocols = ["tcp", "udp", "icmp", "other"]

    public init() {}

    public func countEgress(_ flow: EgressFlow.Proto, allowed: Bool) {
        let p: Int
        switch flow {
        case .tcp: p = 0
        case .udp: p = 1
        case .icmp: p = 2
        case .other: p = 3
        }
        egress[p * 2 + (allowed ? 0 : 1)].add(1)
    }

    public var snapshot: TrafficCounters {
        var c = TrafficCounters()
        c.connectionsInbound = connectionsInbound.current
        c.connectionsOutbound = connectionsOutbound.current
        c.bytesInboundReceived = bytesInboundReceived.current
        c.bytesInboundSent = bytesInboundSent.current
        c.bytesOutboundSent = bytesOutboundSent.current
        c.bytesOutboundReceived = bytesOutboundReceived.current
        c.connectionErrors = connectionErrors.current
        c.dnsAnswered = dnsAnswered.current
        c.dnsForwarded = dnsForwarded.current
        c.dnsMalformed = dnsMalformed.current
        c.httpRequests = httpRequests.current
        c.httpErrors = httpErrors.current
        c.protocolHTTP1 = protocolHTTP1.current
        c.protocolHTTP2 = protocolHTTP2.current
        c.protocolTLS = protocolTLS.current
        c.protocolOpaque = protocolOpaque.current
        c.serverFirst = serverFirst.current
        c.httpRetries = httpRetries.current
        c.httpRetriesDenied = httpRetriesDenied.current
        c.httpRateLimited = httpRateLimited.current
        c.tunnelConnections = tunnelConnections.current
        c.tunnelRefused = tunnelRefused.current
        c.tunnelStreamsOut = tunnelStreamsOut.current
        c.plaintextRefused = plaintextRefused.current
        c.authzDenied = authzDenied.current
        c.plaintextInbound = plaintextInbound.current
        c.traceContextDropped = traceContextDropped.current
        c.connectionsOverLimit = connectionsOverLimit.current
        for (i, name) in Self.egressProtocols.enumerated() {
            for (j, verdict) in ["allowed", "denied"].enumerated() where egress[i * 2 + j].current > 0 {
                c.egress["\(name)/\(verdict)"] = egress[i * 2 + j].current
            }
        }
        return c
    }
}

/// The last outbound connections of a workload and how each was classified, for
/// `weft get connections`. Written once per connection (at the decision), read by the API.
public final class ConnectionLog: Sendable {
    private let entries = Mutex<[ConnectionRecord]>([])
    let capacity: Int

    public init(capacity: Int = 64) { self.capacity = capacity }

    func add(_ record: ConnectionRecord) {
        entries.withLock { list in
            if list.count >= capacity { list.removeFirst(list.count - capacity + 1) }
            list.append(record)
        }
    }

    public var snapshot: [ConnectionRecord] { entries.withLock { $0 } }
}
