import Glibc
import Synchronization
import WeftCore

/// Per-workload traffic counters, updated from the workload's loop and read by the local
/// API from anywhere. Relaxed atomics: each figure is exact, a snapshot is not a transaction.
public final class ProxyCounters: Sendable {
    let connectionsInbound = Atomic<Int>(0)
    let connectionsOutbound = Atomic<Int>(0)
    let bytesInboundReceived = Atomic<Int>(0)
    let bytesInboundSent = Atomic<Int>(0)
    let bytesOutboundSent = Atomic<Int>(0)
    let bytesOutboundReceived = Atomic<Int>(0)
    let connectionErrors = Atomic<Int>(0)

    public init() {}

    public var snapshot: TrafficCounters {
        var c = TrafficCounters()
        c.connectionsInbound = connectionsInbound.load(ordering: .relaxed)
        c.connectionsOutbound = connectionsOutbound.load(ordering: .relaxed)
        c.bytesInboundReceived = bytesInboundReceived.load(ordering: .relaxed)
        c.bytesInboundSent = bytesInboundSent.load(ordering: .relaxed)
        c.bytesOutboundSent = bytesOutboundSent.load(ordering: .relaxed)
        c.bytesOutboundReceived = bytesOutboundReceived.load(ordering: .relaxed)
        c.connectionErrors = connectionErrors.load(ordering: .relaxed)
        return c
    }
}

extension Atomic where Value == Int {
    func add(_ n: Int) { _ = wrappingAdd(n, ordering: .relaxed) }
}
