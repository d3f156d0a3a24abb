import NIOCore
import WeftCore
import WeftIdentity

/// How the proxy reaches an upstream, for every path (L4 splice, protocol detection, the
/// HTTP/1.1 pool): a meshed peer workload through the mTLS tunnel (when both ends have an
/// identity and the peer's PeerAuthentication does not disable mTLS), anything else by a
/// plain TCP connection from inside the netns. Either way the caller gets a byte channel.
extension WorkloadContext {
    /// Whether and to whom `target` is tunnelled: the identity its owner must prove.
    func tunnelPeer(for target: OriginalDestination) -> SpiffeID? {
        guard tls?.identity != nil else { return nil }
        return directory.tunnelPeer(target)
    }

    /// `tcpInitializer` runs on plain TCP channels before connect; `initializer` on both
    /// kinds once the channel is usable (stream: after the peer accepted it). Reads stay
    /// off on TCP channels until the caller turns autoRead on.
    func dial(_ target: OriginalDestination, proto: String, timeout: TimeAmount? = nil,
              tcpInitializer: @escaping @Sendable (Channel) throws -> Void = { _ in },
              initializer: @escaping @Sendable (Channel) throws -> Void) -> EventLoopFuture<Channel> {
        dial(UpstreamKey(endpoint: target, tunnel: tunnelPeer(for: target)), proto: proto, timeout: timeout,
             tcpInitializer: tcpInitializer, initializer: initializer)
    }

    /// The key of a pooled upstream: where, and through the tunnel to whom (nil: plain TCP).
    func upstreamKey(_ target: OriginalDestination) -> UpstreamKey {
        UpstreamKey(endpoint: target, tunnel: tunnelPeer(for: target))
    }

    /// As above, the transport decided by `key` (so a pooled connection is reused only for
    /// the transport it was made with: a PeerAuthentication change applies to new requests).
    func dial(_ key: UpstreamKey, proto: String, timeout: TimeAmount? = nil,
              tcpInitializer: @escaping @Sendable (Channel) throws -> Void = { _ in },
              initializer: @escaping @Sendable (Channel) throws -> Void) -> EventLoopFuture<Channel> {
        let target = key.endpoint
        if let peer = key.tunnel {
            counters.tunnelStreamsOut.add(1)
            return tunnels.value.openStream(to: target, peer: peer, proto: proto, workload: self, initializer: initializer)
        }
        let address: SocketAddress
        do { address = try target.socketAddress } catch {
            return loop.loop.makeFailedFuture(error)
        }
        return loop.connect(to: address, mark: mark, timeout: timeout ?? connectTimeout) { channel in
            channel.eventLoop.makeCompletedFuture { try tcpInitializer(channel) }
        }.flatMapThrowing { channel in
            try initializer(channel)
            return channel
        }
    }
}

/// A pooled upstream's identity: its endpoint and its transport.
struct UpstreamKey: Hashable, Sendable, CustomStringConvertible {
    let endpoint: OriginalDestination
    /// The peer identity the tunnel proved; nil for plain TCP.
    let tunnel: SpiffeID?

    var description: String { tunnel.map { "\(endpoint) via \($0)" } ?? "\(endpoint)" }
}
