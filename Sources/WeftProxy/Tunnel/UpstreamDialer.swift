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
        if let peer = tunnelPeer(for: target) {
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
