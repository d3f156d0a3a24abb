import Logging
import NIOCore
import NIOHPACK
import NIOHTTP2
import NIOSSL
import NIOTLS
import WeftCore
import WeftIdentity

/// The client side of the mesh tunnel for one workload (loop-confined): one mTLS HTTP/2
/// connection per peer workload on its port 15008, kept and shared, and one CONNECT
/// stream per proxied connection (or per pooled HTTP/1.1 upstream), so handshakes are
/// rare. A connection is usable only after the server proved the identity the
/// destination is allowed to have (secure naming); nothing is sent on it before.
final class TunnelPool {
    private typealias Mux = NIOHTTP2Handler.StreamMultiplexer

    private struct Key: Hashable {
        let address: OriginalDestination
        let peer: SpiffeID
    }

    private enum Entry {
        case connecting([EventLoopPromise<Mux>])
        case ready(Channel, Mux)
    }

    private var entries: [Key: Entry] = [:]

    /// A byte stream to `target` (a port of the peer pod), through the tunnel to `peer`.
    /// `initializer` runs on the stream once the peer accepted it, before any byte of the
    /// peer's arrives.
    func openStream(to target: OriginalDestination, peer: SpiffeID, proto: String, workload: WorkloadContext,
                    initializer: @escaping @Sendable (Channel) throws -> Void) -> EventLoopFuture<Channel> {
        let loop = workload.loop.loop
        let tunnelAddress = OriginalDestination(ip: target.ip, port: workload.ports.tunnel)
        return multiplexer(Key(address: tunnelAddress, peer: peer), workload: workload).flatMap { mux in
            let opened = loop.makePromise(of: Channel.self)
            let created = loop.makePromise(of: Channel.self)
            mux.createStreamChannel(promise: created) { stream in
                stream.eventLoop.makeCompletedFuture {
                    try stream.pipeline.syncOperations.addHandler(
                        TunnelConnectClient(target: target, proto: proto, opened: opened, timeout: workload.connectTimeout,
                                            initializer: initializer))
                }
            }
            created.futureResult.whenFailure { opened.fail($0) }
            return opened.futureResult
        }
    }

    private func multiplexer(_ key: Key, workload: WorkloadContext) -> EventLoopFuture<Mux> {
        let loop = workload.loop.loop
        switch entries[key] {
        case .ready(let channel, let mux) where channel.isActive:
            return loop.makeSucceededFuture(mux)
        case .connecting(var waiters):
            let promise = loop.makePromise(of: Mux.self)
            waiters.append(promise)
            entries[key] = .connecting(waiters)
            return promise.futureResult
        case .ready, nil:
            break
        }
        let promise = loop.makePromise(of: Mux.self)
        entries[key] = .connecting([promise])
        guard let tls = workload.tls?.clientContext, let trustDomain = workload.tls?.trustDomain else {
            finish(key, with: .failure(WeftError(.system, "workload \(workload.spec.name) has no certificate yet")))
            return promise.futureResult
        }
        let address: SocketAddress
        do { address = try key.address.socketAddress } catch {
            finish(key, with: .failure(error))
            return promise.futureResult
        }
        let verified = loop.makePromise(of: Mux.self)
        let bound = NIOLoopBound(self, eventLoop: loop)
        workload.loop.connect(to: address, mark: workload.mark, timeout: workload.connectTimeout) { channel in
            channel.eventLoop.makeCompletedFuture {
                let sync = channel.pipeline.syncOperations
                try channel.syncOptions?.setOption(.allowRemoteHalfClosure, value: false)
                try sync.addHandler(try NIOSSLClientHandler(context: tls, serverHostname: nil))
                try sync.addHandler(TunnelWriteCoalescer())
                try sync.addHandler(SecureNamingCheck(expected: key.peer, trustDomain: trustDomain, verified: verified) {
                    bound.value.forget(key, channel: channel)  // GOAWAY: the peer drains; new streams go to a new connection
                })
            }
        }.whenComplete { result in
            switch result {
            case .success(let channel):
                channel.closeFuture.whenComplete { _ in bound.value.forget(key, channel: channel) }
                _ = channel.setOption(.autoRead, value: true)
                verified.futureResult.whenComplete { bound.value.finish(key, with: $0.map { (channel, $0) }) }
            case .failure(let error):
                verified.fail(error)
                bound.value.finish(key, with: .failure(error))
            }
        }
        return promise.futureResult
    }

    private func finish(_ key: Key, with result: Result<(Channel, Mux), Error>) {
        guard case .connecting(let waiters) = entries[key] else { return }
        switch result {
        case .success(let (channel, mux)):
            entries[key] = .ready(channel, mux)
            for w in waiters { w.succeed(mux) }
        case .failure(let error):
            entries[key] = nil
            for w in waiters { w.fail(error) }
        }
    }

    private func forget(_ key: Key, channel: Channel) {
        if case .ready(let current, _) = entries[key], current === channel { entries[key] = nil }
    }

    /// The workload drains: no new streams on these connections; each closes once its last
    /// stream has ended (HTTP2DrainHandler).
    func drain() {
        for case .ready(let channel, _) in entries.values { channel.pipeline.fireUserInboundEventTriggered(ProxyDrainEvent()) }
        entries.removeAll()
    }
}

/// After the TLS handshake of an outgoing tunnel connection: the server's SPIFFE ID must be
/// the one expected for the destination; only then is HTTP/2 set up (and so nothing is
/// ever written to a server with the wrong identity).
final class SecureNamingCheck: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny
    private let expected: SpiffeID
    private let trustDomain: String
    private let verified: EventLoopPromise<NIOHTTP2Handler.StreamMultiplexer>
    private let onGoAway: () -> Void

    init(expected: SpiffeID, trustDomain: String, verified: EventLoopPromise<NIOHTTP2Handler.StreamMultiplexer>,
         onGoAway: @escaping () -> Void = {}) {
        self.expected = expected
        self.trustDomain = trustDomain
        self.verified = verified
        self.onGoAway = onGoAway
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard case .handshakeCompleted? = event as? TLSUserEvent else {
            context.fireUserInboundEventTriggered(event)
            return
        }
        do {
            let actual = try TunnelPeer.identity(of: context.channel, trustDomain: trustDomain)
            guard actual == expected else {
                throw WeftError(.permissionDenied, "secure naming: the peer at \(context.channel.remoteAddress.map { "\($0)" } ?? "?") is \(actual), expected \(expected)")
            }
            let sync = context.pipeline.syncOperations
            let drain = HTTP2DrainHandler(sendsGoAway: false)
            let mux = try sync.configureHTTP2Pipeline(mode: .client, connectionConfiguration: TunnelConfig.connection,
                                                      streamConfiguration: TunnelConfig.stream, streamDelegate: drain) { pushed in
                pushed.close()
            }
            let watcher = GoAwayWatcher()
            watcher.onGoAway = onGoAway
            try sync.addHandler(watcher)
            try sync.addHandler(drain)
            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
            verified.succeed(mux)
        } catch {
            verified.fail(error)
            context.close(promise: nil)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        verified.fail(error)
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        verified.fail(WeftError(.system, "tunnel connection closed during the TLS handshake"))
        context.fireChannelInactive()
    }
}

/// The client's end of one CONNECT stream: asks for the target, waits for the peer's 200,
/// then turns the stream into a byte channel for the caller's handlers.
final class TunnelConnectClient: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTP2Frame.FramePayload
    typealias OutboundOut = HTTP2Frame.FramePayload

    private let target: OriginalDestination
    private let proto: String
    private let opened: EventLoopPromise<Channel>
    private let initializer: @Sendable (Channel) throws -> Void
    /// How long the peer may take to accept the stream (the connect timeout): a peer that
    /// never answers must not hold the caller forever.
    private let timeout: TimeAmount
    private var timer: Scheduled<Void>?

    init(target: OriginalDestination, proto: String, opened: EventLoopPromise<Channel>, timeout: TimeAmount,
         initializer: @escaping @Sendable (Channel) throws -> Void) {
        self.target = target
        self.proto = proto
        self.opened = opened
        self.timeout = timeout
        self.initializer = initializer
    }

    func handlerAdded(context: ChannelHandlerContext) {
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        let timeout = self.timeout
        timer = context.eventLoop.scheduleTask(in: timeout) {
            let (handler, context) = bound.value
            handler.fail(context, WeftError(.system, "tunnel peer did not accept the stream to \(handler.target) within \(timeout.nanoseconds / 1_000_000) ms"))
        }
        if context.channel.isActive { sendConnect(context) }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        timer?.cancel()
    }

    func channelActive(context: ChannelHandlerContext) {
        sendConnect(context)
        context.fireChannelActive()
    }

    private var sent = false

    private func sendConnect(_ context: ChannelHandlerContext) {
        guard !sent else { return }
        sent = true
        let headers = HPACKHeaders([(":method", "CONNECT"), (":authority", target.description),
                                    (TunnelConfig.protocolHeader, proto)])
        context.writeAndFlush(wrapOutboundOut(.headers(.init(headers: headers))), promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard case .headers(let response) = unwrapInboundIn(data) else {
            fail(context, WeftError(.protocolError, "tunnel peer sent data before accepting the stream"))
            return
        }
        let status = response.headers.first(name: ":status") ?? "?"
        guard status == "200", !response.endStream else {
            let reason = response.headers.first(name: "x-weft-reason") ?? "status \(status)"
            fail(context, TunnelRefused(status: Int(status) ?? 0, reason: reason))
            return
        }
        do {
            let sync = context.pipeline.syncOperations
            sync.removeHandler(context: context, promise: nil)
            try sync.addHandler(TunnelStreamCodec())
            try initializer(context.channel)
            opened.succeed(context.channel)
        } catch {
            fail(context, error)
        }
    }

    private func fail(_ context: ChannelHandlerContext, _ error: Error) {
        opened.fail(error)
        context.close(promise: nil)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        fail(context, error)
    }

    func channelInactive(context: ChannelHandlerContext) {
        opened.fail(WeftError(.system, "tunnel stream to \(target) closed before it was accepted"))
        context.fireChannelInactive()
    }
}

/// The peer refused a tunnel stream: 403 (authorization policy), 503 (nothing listens on
/// the port), 400 (a bad request).
struct TunnelRefused: Error, CustomStringConvertible {
    let status: Int
    let reason: String
    var description: String { "tunnel peer refused (\(status)): \(reason)" }
}
