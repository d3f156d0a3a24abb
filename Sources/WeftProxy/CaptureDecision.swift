import Glibc
import WeftCore

/// What to do with a connection a capture listener accepted. Pure, so every case is a
/// table-driven unit test with no sockets.
public enum CaptureDecision: Equatable, Sendable {
    /// Connect to this address (from inside the workload's netns, marked).
    case forward(to: OriginalDestination)
    /// Close the connection; the reason is logged and counted.
    case refuse(String)
}

public struct ProxyPorts: Sendable, Equatable {
    public var outbound: UInt16
    public var inbound: UInt16
    public var tunnel: UInt16

    public init(_ s: CaptureSettings) {
        outbound = s.outboundPort
        inbound = s.inboundPort
        tunnel = s.tunnelPort
    }

    var all: Set<UInt16> { [outbound, inbound, tunnel] }
}

public enum CaptureDecisions {
    /// An app's outbound connection. SO_ORIGINAL_DST equal to the listener's own address
    /// means the connection was not redirected (someone dialled 127.0.0.1:15001 directly):
    /// forwarding it would connect the proxy to itself.
    public static func outbound(original: OriginalDestination, listener: OriginalDestination, ports: ProxyPorts) -> CaptureDecision {
        if original == listener {
            return .refuse("connection to the proxy port itself (not redirected by capture rules)")
        }
        if original.ip.isLoopback && ports.all.contains(original.port) {
            return .refuse("destination \(original) is a proxy port on loopback (would loop)")
        }
        return .forward(to: original)
    }

    /// A connection that arrived at the workload from the network. The app is reached on
    /// loopback inside its own netns, on the port the caller dialled.
    public static func inbound(original: OriginalDestination, listener: OriginalDestination, ports: ProxyPorts) -> CaptureDecision {
        if original == listener {
            return .refuse("connection to the inbound proxy port itself (not redirected by capture rules)")
        }
        if ports.all.contains(original.port) {
            return .refuse("inbound to proxy port \(original.port) is not forwarded to the app")
        }
        let loopback: IPAddress = original.ip.family == .v4 ? .v4(0x7f00_0001) : .v6([UInt8](repeating: 0, count: 15) + [1])
        return .forward(to: OriginalDestination(ip: loopback, port: original.port))
    }

    /// Where to try next when the app refuses the inbound target: an app that listens on
    /// IPv4 only is still reachable by IPv6 callers (the mesh terminated their connection).
    public static func inboundFallback(after target: OriginalDestination) -> OriginalDestination? {
        guard target.ip.family == .v6, target.ip.isLoopback else { return nil }
        return OriginalDestination(ip: .v4(0x7f00_0001), port: target.port)
    }
}
