import Glibc
import NIOCore
import NIOHPACK
import NIOHTTP2
import NIOSSL
import NIOTLS
import WeftConfig
import WeftCore
import WeftTelemetry
import WeftIdentity

/// The server side of the mesh tunnel, on port 15008 of every meshed netns (never
/// captured):
///
/// 1. TLS 1.3; the peer must present a certificate that chains to the bundle and is valid
///    now (refused otherwise, with the reason logged and counted; a handshake not done in
///    10 s is dropped)
/// 2. the peer's SPIFFE ID (its one URI SAN) must be in our trust domain
/// 3. HTTP/2; every stream is a CONNECT to a port of this workload (`:authority` is the
///    caller's original destination, the pod address and port)
/// 4. policy with the caller's identity known, then connect to the app on loopback and
///    splice the stream to it
enum TunnelServer {
    static func accept(_ channel: Channel, context: WorkloadContext, listener: OriginalDestination) {
        context.counters.tunnelConnections.add(1)
        // A handshake flood is cut off here, before any TLS work: the workload's loop keeps
        // serving its established connections.
        let pending = context.counters.tunnelHandshaking.current
        guard pending < TunnelConfig.maxPendingHandshakes else {
            context.counters.tunnelRefused.add(1)
            context.logger.notice("tunnel connection refused: \(pending) TLS handshakes already in progress (handshake flood?)",
                                  metadata: ["workload": "\(context.spec.name)", "peer": "\(channel.remoteAddress.map { "\($0)" } ?? "?")"])
            channel.closeWithReset()
            return
        }
        guard let tls = context.tls?.serverContext, let trustDomain = context.tls?.trustDomain else {
            _ = context.refuse(channel, direction: .inbound, reason: "tunnel connection before the workload has a certificate")
            return
        }
        do {
            let sync = channel.pipeline.syncOperations
            // A peer's close_notify ends the connection (no half-open tunnels lingering).
            try channel.syncOptions?.setOption(.allowRemoteHalfClosure, value: false)
            try sync.addHandler(NIOSSLServerHandler(context: tls))
            try sync.addHandler(TunnelWriteCoalescer())
            try sync.addHandler(TunnelServerGate(workload: context, trustDomain: trustDomain, listener: listener))
            try channel.syncOptions?.setOption(.autoRead, value: true)
        } catch {
            _ = context.refuse(channel, direction: .inbound, reason: "tunnel setup: \(error)")
        }
    }
}

/// Holds a new tunnel connection until its handshake is done and its peer's identity is
/// acceptable, then sets up HTTP/2 with a CONNECT handler per stream.
private final class TunnelServerGate: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny
    private let workload: WorkloadContext
    private let trustDomain: String
    private let listener: OriginalDestination
    private var timer: Scheduled<Void>?

    init(workload: WorkloadContext, trustDomain: String, listener: OriginalDestination) {
        self.workload = workload
        self.trustDomain = trustDomain
        self.listener = listener
    }

    /// Counted in `tunnelHandshaking` from here until the handshake ends either way.
    private var handshaking = false

    private func handshakeOver() {
        if handshaking {
            handshaking = false
            workload.counters.tunnelHandshaking.add(-1)
        }
    }

    func handlerAdded(context: ChannelHandlerContext) {
        handshaking = true
        workload.counters.tunnelHandshaking.add(1)
        let channel = context.channel
        let workload = self.workload
        timer = context.eventLoop.scheduleTask(in: TunnelConfig.handshakeTimeout) {
            workload.counters.tunnelRefused.add(1)
            workload.logger.notice("tunnel connection refused: no TLS handshake within 10 s",
                                   metadata: ["workload": "\(workload.spec.name)", "peer": "\(channel.remoteAddress.map { "\($0)" } ?? "?")"])
            channel.close(promise: nil)
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        timer?.cancel()
        handshakeOver()
    }

    func channelInactive(context: ChannelHandlerContext) {
        handshakeOver()
        context.fireChannelInactive()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard case .handshakeCompleted? = event as? TLSUserEvent else {
            context.fireUserInboundEventTriggered(event)
            return
        }
        timer?.cancel()
        handshakeOver()
        do {
            let peer = try TunnelPeer.identity(of: context.channel, trustDomain: trustDomain)
            let workload = self.workload
            let listener = self.listener
            let client = context.channel.remoteAddress?.weftIP
            let sync = context.pipeline.syncOperations
            let drain = HTTP2DrainHandler(sendsGoAway: true)
            _ = try sync.configureHTTP2Pipeline(mode: .server, connectionConfiguration: TunnelConfig.connection,
                                                streamConfiguration: TunnelConfig.stream, streamDelegate: drain) { stream in
                stream.eventLoop.makeCompletedFuture {
                    try stream.pipeline.syncOperations.addHandler(
                        TunnelConnectServer(workload: workload, peer: peer, client: client, listener: listener))
                }
            }
            try sync.addHandler(drain)
            sync.removeHandler(context: context, promise: nil)
        } catch {
            refuse(context, reason: "\(error)")
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        refuse(context, reason: Self.describe(error))
    }

    private func refuse(_ context: ChannelHandlerContext, reason: String) {
        workload.counters.tunnelRefused.add(1)
        workload.logger.notice("tunnel connection refused: \(reason)",
                               metadata: ["workload": "\(workload.spec.name)", "peer": "\(context.channel.remoteAddress.map { "\($0)" } ?? "?")"])
        context.close(promise: nil)
    }

    /// BoringSSL's verify errors, named: expired, not yet valid, unknown issuer (self-signed
    /// or another CA), no certificate, not TLS at all.
    static func describe(_ error: Error) -> String {
        let text = "\(error)"
        let known: [(String, String)] = [
            ("CERTIFICATE_VERIFY_FAILED", "peer certificate failed verification"),
            ("PEER_DID_NOT_RETURN_A_CERTIFICATE", "peer presented no certificate"),
            ("WRONG_VERSION_NUMBER", "not TLS (plaintext on the tunnel port?)"),
            ("UNSUPPORTED_PROTOCOL", "peer does not speak TLS 1.3"),
            ("HTTP_REQUEST", "plaintext HTTP on the tunnel port"),
        ]
        for (needle, meaning) in known where text.contains(needle) { return "\(meaning): \(text)" }
        return "TLS handshake failed: \(text)"
    }
}

/// One CONNECT stream from a verified peer: where to, then policy, then the app.
private final class TunnelConnectServer: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTP2Frame.FramePayload
    typealias OutboundOut = HTTP2Frame.FramePayload

    private let workload: WorkloadContext
    private let peer: SpiffeID
    private let client: IPAddress?
    private let listener: OriginalDestination
    private var started = false

    init(workload: WorkloadContext, peer: SpiffeID, client: IPAddress?, listener: OriginalDestination) {
        self.workload = workload
        self.peer = peer
        self.client = client
        self.listener = listener
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !started else { return }  // data before our 200 is a protocol error; dropped
        guard case .headers(let request) = unwrapInboundIn(data) else {
            respond(context, status: 400, reason: "expected CONNECT headers first")
            return
        }
        started = true
        guard request.headers.first(name: ":method") == "CONNECT",
              let authority = request.headers.first(name: ":authority"),
              let original = OriginalDestination(authority) else {
            respond(context, status: 400, reason: "not a CONNECT to IP:PORT")
            return
        }
        workload.counters.connectionsInbound.add(1)
        let ownIPs = [workload.spec.podIP, workload.spec.podIPv6].compactMap { $0 }
        guard ownIPs.contains(original.ip) else {
            respond(context, status: 400, reason: "\(original) is not an address of workload \(workload.spec.name)")
            return
        }
        guard case .forward(let target) = CaptureDecisions.inbound(original: original, listener: listener, ports: workload.ports) else {
            respond(context, status: 400, reason: "port \(original.port) is a proxy port")
            return
        }
        // AuthorizationPolicy with the caller's proven identity: HTTP/1.1 streams are checked
        // request by request (403s), anything else once, now.
        let policies = workload.directory.authorizationPolicies(namespace: workload.spec.namespace.rawValue, labels: workload.spec.labels)
        let proto = request.headers.first(name: TunnelConfig.protocolHeader) ?? "unknown"
        // With tracing on, HTTP goes through the gate too: it makes the server spans.
        if !policies.isEmpty || workload.telemetry?.tracer != nil, proto == "http/1.1" || proto == "h2c" {
            gatePolicies = policies
            gateHTTP2 = proto == "h2c"
        } else {
            let check = AuthorizationRequest(principal: peer.description, sourceIP: client, port: original.port)
            let decision = InboundAuthorization.decideConnection(check, policies: policies)
            if case .deny(let policy, let reason) = decision {
                InboundAuthorization.logDenial(workload, decision, request: check, what: "connection (\(proto))")
                respond(context, status: 403, reason: "denied by AuthorizationPolicy \(policy): \(reason)", counted: false)
                return
            }
        }
        port = original.port
        connect(context, to: target, original: original, fallback: CaptureDecisions.inboundFallback(after: target))
    }

    /// Set when this stream's requests go through the authorization gate.
    private var gatePolicies: [AuthorizationPolicy]?
    /// The gated stream carries HTTP/2 (each of its streams is gated).
    private var gateHTTP2 = false
    private var port: UInt16 = 0

    private func connect(_ context: ChannelHandlerContext, to target: OriginalDestination, original: OriginalDestination,
                         fallback: OriginalDestination?) {
        let stream = context.channel
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        let address: SocketAddress
        do { address = try target.socketAddress } catch {
            respond(context, status: 400, reason: "bad destination \(target)")
            return
        }
        workload.loop.connect(to: address, mark: workload.mark, timeout: workload.connectTimeout) { _ in
            stream.eventLoop.makeSucceededVoidFuture()
        }.whenComplete { result in
            let (handler, context) = bound.value
            switch result {
            case .success(let app):
                guard stream.isActive else {
                    app.close(promise: nil)
                    return
                }
                handler.accepted(context, app: app, target: target)
            case .failure(let error):
                if let fallback, WorkloadContext.isRefused(error) {
                    handler.connect(context, to: fallback, original: original, fallback: nil)
                } else {
                    handler.respond(context, status: 503, reason: "upstream \(target): \(WorkloadContext.describe(error))")
                }
            }
        }
    }

    private func accepted(_ context: ChannelHandlerContext, app: Channel, target: OriginalDestination) {
        context.writeAndFlush(wrapOutboundOut(.headers(.init(headers: [":status": "200"]))), promise: nil)
        do {
            let sync = context.pipeline.syncOperations
            sync.removeHandler(context: context, promise: nil)
            try sync.addHandler(TunnelStreamCodec())
            if let policies = gatePolicies, gateHTTP2 {
                try InboundAuthorization.startHTTP2Gate(downstream: context.channel, app: app, workload: workload, principal: peer.description,
                                                        source: client, port: port, policies: policies)
            } else if let policies = gatePolicies {
                try InboundAuthorization.startGate(downstream: context.channel, app: app, workload: workload, principal: peer.description,
                                                   source: client, port: port, policies: policies)
            } else {
                try Splice.join(downstream: context.channel, upstream: app,
                                downstreamReceived: workload.counters.bytesInboundReceived, upstreamReceived: workload.counters.bytesInboundSent,
                                tcp: workload.inboundLabels(client: client, principal: peer.description, requestProtocol: "tcp")
                                    .flatMap { TCPTally($0, telemetry: workload.telemetry, downstream: context.channel, upstream: target) },
                                idleTimeout: workload.idleTimeout)
            }
            workload.logger.debug("inbound connection", metadata: ["client": "\(client.map { "\($0)" } ?? "?")", "destination": "\(target)",
                                                                   "peer": "\(peer)", "via": "tunnel"])
        } catch {
            app.close(promise: nil)
            context.close(promise: nil)
        }
    }

    private func respond(_ context: ChannelHandlerContext, status: Int, reason: String, counted: Bool = true) {
        if counted { workload.counters.connectionErrors.add(1) }
        workload.logger.notice("inbound connection refused: \(reason)",
                               metadata: ["workload": "\(workload.spec.name)", "peer": "\(peer)", "via": "tunnel", "status": "\(status)"])
        let headers = HPACKHeaders([(":status", "\(status)"), ("x-weft-reason", reason)])
        context.writeAndFlush(wrapOutboundOut(.headers(.init(headers: headers, endStream: true))), promise: nil)
    }
}
