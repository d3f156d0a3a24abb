import Glibc
import CWeftLinux
import NIOCore
import NIOPosix
import WeftCore

/// An event loop whose thread lives inside one workload's network namespace.
///
/// setns() moves only the calling thread, and NIO creates a socket on whichever thread calls
/// bind/connect (not on the loop). So this type is the *only* way the proxy creates sockets
/// for a workload: every bind and connect is submitted to the loop, whose thread entered the
/// netns once at start and never leaves. Sockets made anywhere else would silently land in
/// the host's namespace.
///
/// Trade-off: one thread per workload. Workloads cannot starve each other's loops, and the
/// thread's netns is fixed for its lifetime (no enter/leave on the hot path); the cost is a
/// mostly idle thread for a quiet workload.
public final class NetnsEventLoop: Sendable {
    public let netns: NetnsName
    private let group: MultiThreadedEventLoopGroup
    public var loop: EventLoop { group.any() }

    private init(netns: NetnsName, group: MultiThreadedEventLoopGroup) {
        self.netns = netns
        self.group = group
    }

    /// Starts the loop thread and moves it into the namespace behind `nsfd`, then checks with
    /// SO_NETNS_COOKIE that a socket made on it really is in that namespace.
    public static func start(netns: NetnsName, nsfd: Int32, expectedCookie: UInt64) async throws -> NetnsEventLoop {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        do {
            try await group.any().submit {
                let rc = weft_setns_net(nsfd)
                guard rc == 0 else {
                    throw WeftError(.system, "cannot enter netns \(netns): \(String(cString: strerror(-rc)))")
                }
                let probe = socket(AF_INET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
                defer { close(probe) }
                var cookie: UInt64 = 0
                guard probe >= 0, weft_socket_netns_cookie(probe, &cookie) == 0, cookie == expectedCookie else {
                    throw WeftError(.system, "loop thread for netns \(netns) is not inside it (cookie mismatch)")
                }
            }.get()
        } catch {
            try? await group.shutdownGracefully()
            throw error
        }
        return NetnsEventLoop(netns: netns, group: group)
    }

    /// Binds a TCP listener inside the namespace. Accepted channels stay on this loop.
    public func listen(
        on address: SocketAddress,
        autoRead: Bool = false,
        childInitializer: @escaping @Sendable (Channel) -> EventLoopFuture<Void>
    ) -> EventLoopFuture<Channel> {
        let loop = self.loop
        // IPv6 listeners are v6-only so they can sit beside the IPv4 ones on the same port.
        let isV6 = address.protocol == .inet6
        return loop.flatSubmit {
            var bootstrap = ServerBootstrap(group: loop)
            if isV6 {
                bootstrap = bootstrap.serverChannelOption(
                    ChannelOptions.Types.SocketOption(level: .ipv6, name: .ipv6_v6only), value: 1)
            }
            return bootstrap
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .serverChannelOption(.backlog, value: 1024)
                .childChannelOption(.autoRead, value: autoRead)
                .childChannelOption(.allowRemoteHalfClosure, value: !autoRead)
                .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
                .childChannelInitializer(childInitializer)
                .bind(to: address)
        }
    }

    /// Binds a UDP socket inside the namespace.
    public func bindUDP(
        on address: SocketAddress,
        initializer: @escaping @Sendable (Channel) -> EventLoopFuture<Void>
    ) -> EventLoopFuture<Channel> {
        let loop = self.loop
        return loop.flatSubmit {
            // No SO_REUSEADDR: on a UDP socket it would let any process in the netns that
            // also sets it bind the same address and port and take the datagrams (the app
            // stealing its own DNS proxy's queries). EscapeTests tries it.
            DatagramBootstrap(group: loop)
                .channelInitializer(initializer)
                .bind(to: address)
        }
    }

    /// Connects from inside the namespace. `mark` is set as SO_MARK before the SYN leaves, so
    /// the capture rules let the proxy's own connection through.
    public func connect(
        to address: SocketAddress,
        mark: UInt32,
        timeout: TimeAmount,
        initializer: @escaping @Sendable (Channel) -> EventLoopFuture<Void>
    ) -> EventLoopFuture<Channel> {
        let loop = self.loop
        return loop.flatSubmit {
            ClientBootstrap(group: loop)
                .channelOption(.socketOption(.init(rawValue: WEFT_SO_MARK)), value: SocketOptionValue(Int32(bitPattern: mark)))
                .channelOption(.autoRead, value: false)
                .channelOption(.allowRemoteHalfClosure, value: true)
                .channelOption(.socketOption(.tcp_nodelay), value: 1)
                .connectTimeout(timeout)
                .channelInitializer(initializer)
                .connect(to: address)
        }
    }

    public func shutdown() async {
        try? await group.shutdownGracefully()
    }
}
