import Synchronization
import WeftCore

/// The catalog as the data path reads it: one immutable snapshot, swapped whole by the agent
/// (never a half-updated view), plus a round-robin position per service. Shared by every
/// workload loop of the agent; one short lock per new connection.
public final class ServiceDirectory: Sendable {
    private struct State {
        var catalog: ServiceCatalog?
        var cursors: [ServiceKey: Int] = [:]
    }

    private let state = Mutex(State())

    public init() {}

    public func publish(_ catalog: ServiceCatalog) {
        state.withLock { $0.catalog = catalog }
    }

    /// The protocol a service declares for the dialled VIP port (`--port 80:3000/http`).
    public func portProtocol(_ destination: OriginalDestination) -> PortProtocol? {
        state.withLock { state in
            state.catalog?.service(forVIP: destination.ip)?.ports.first { $0.port == destination.port }?.proto
        }
    }

    /// The virtual IPs of a service, for the DNS proxy.
    public func lookup(name: String, namespace: String) -> (vip: IPAddress, vip6: IPAddress?)? {
        state.withLock { $0.catalog?.service(named: name, namespace: namespace).map { ($0.vip, $0.vip6) } }
    }

    /// Resolves a captured destination: a service VIP becomes one of its endpoints (round
    /// robin per service); anything else passes through.
    public func resolve(_ destination: OriginalDestination) -> ServiceResolution {
        state.withLock { state in
            guard let entry = state.catalog?.service(forVIP: destination.ip) else { return .passthrough }
            let turn = state.cursors[entry.key, default: 0]
            state.cursors[entry.key] = turn &+ 1
            return entry.resolve(port: destination.port, family: destination.ip.family) { count in turn % count }
        }
    }
}
