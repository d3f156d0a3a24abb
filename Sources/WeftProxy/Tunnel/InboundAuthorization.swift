import NIOCore
import NIOHTTP1
import WeftConfig
import WeftCore
import WeftTelemetry

/// AuthorizationPolicy at the destination. A connection whose policies look only at who
/// calls and which port (`InboundAuthorization.decideConnection`) is decided once, before the
/// app is dialled; HTTP/1.1 whose policies look at requests goes through the gate below,
/// which checks every request head before any of it reaches the app.
enum InboundAuthorization {
    /// Checks a connection with no HTTP view (TCP, or not yet known to be HTTP).
    static func decideConnection(_ request: AuthorizationRequest, policies: [AuthorizationPolicy]) -> AuthorizationDecision {
        policies.isEmpty ? .allow : Authorization.decide(request, policies: policies)
    }

    static func logDenial(_ workload: WorkloadContext, _ decision: AuthorizationDecision, request: AuthorizationRequest, what: String) {
        guard case .deny(let policy, let reason) = decision else { return }
        workload.counters.authzDenied.add(1)
        workload.logger.notice("\(what) denied by AuthorizationPolicy \(policy): \(reason)",
                               metadata: ["workload": "\(workload.spec.name)", "principal": "\(request.principal ?? "none (plaintext)")",
                                          "source": "\(request.sourceIP.map { "\($0)" } ?? "?")", "port": "\(request.port)"])
    }

    /// Puts HTTP codecs on both sides and the gate between them (`downstream` is the tunnel
    /// stream or the plaintext connection, `app` the connection to the app on loopback).
    static func startGate(downstream: Channel, app: Channel, workload: WorkloadContext, principal: String?,
                          source: IPAddress?, port: UInt16, policies: [AuthorizationPolicy]) throws {
        let gate = AuthorizationGate(workload: workload, app: app, principal: principal, source: source, port: port, policies: policies)
        try downstream.pipeline.syncOperations.configureHTTPServerPipeline(withPipeliningAssistance: true, withErrorHandling: true)
        try downstream.pipeline.syncOperations.addHandler(gate)
        try app.pipeline.syncOperations.addHTTPClientHandlers()
        try app.pipeline.syncOperations.addHandler(AppResponseRelay(gate: gate))
        try downstream.syncOptions?.setOption(.autoRead, value: true)
        try app.syncOptions?.setOption(.autoRead, value: true)
    }
}

/// The downstream side: request heads are decided, allowed requests stream to the app,
/// denied ones get 403 (the connection stays usable for the next request).
final class AuthorizationGate: ChannelDuplexHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    let workload: WorkloadContext
    private let app: Channel
    let principal: String?
    private let source: IPAddress?
    let port: UInt16
    private let policies: [AuthorizationPolicy]
    private var denying = false
    private var pendingRead = false
    /// The traced request being served (tracing on).
    var span: ServerSpan?
    fileprivate var context: ChannelHandlerContext?

    init(workload: WorkloadContext, app: Channel, principal: String?, source: IPAddress?, port: UInt16, policies: [AuthorizationPolicy]) {
        self.workload = workload
        self.app = app
        self.principal = principal
        self.source = source
        self.port = port
        self.policies = policies
    }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }
    func handlerRemoved(context: ChannelHandlerContext) { self.context = nil }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            var headers: [String: String] = [:]
            for (name, value) in head.headers where headers[name.lowercased()] == nil { headers[name.lowercased()] = value }
            let path = head.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? head.uri
            let request = AuthorizationRequest(principal: principal, sourceIP: source, port: port,
                                               http: .init(method: head.method.rawValue, path: path, host: headers["host"] ?? "", headers: headers))
            let decision = Authorization.decide(request, policies: policies)
            if case .deny(let policy, let reason) = decision {
                denying = true
                InboundAuthorization.logDenial(workload, decision, request: request, what: "\(head.method.rawValue) \(path)")
                respond403(context, keepAlive: head.isKeepAlive, policy: policy, reason: reason)
            } else {
                denying = false
                var head = head
                if let tracer = workload.telemetry?.tracer { startServerSpan(&head, path: path, tracer: tracer) }
                app.write(HTTPClientRequestPart.head(head), promise: nil)
            }
        case .body(let body):
            if !denying { app.write(HTTPClientRequestPart.body(.byteBuffer(body)), promise: nil) }
        case .end(let trailers):
            if !denying { app.writeAndFlush(HTTPClientRequestPart.end(trailers), promise: nil) }
            denying = false
        }
    }

    private func respond403(_ context: ChannelHandlerContext, keepAlive: Bool, policy: String, reason: String) {
        let body = "RBAC: access denied (AuthorizationPolicy \(policy): \(reason))\n"
        var headers = HTTPHeaders([("content-type", "text/plain"), ("content-length", "\(body.utf8.count)"),
                                   ("x-weft-response-flags", "RBAC")])
        if !keepAlive { headers.add(name: "connection", value: "close") }
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .forbidden, headers: headers))), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(string: body)))), promise: nil)
        let done = context.writeAndFlush(wrapOutboundOut(.end(nil)))
        if !keepAlive {
            let channel = context.channel
            done.whenComplete { _ in channel.close(promise: nil) }
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) { app.flush() }

    func channelInactive(context: ChannelHandlerContext) {
        finishServerSpan(status: 0)
        app.close(promise: nil)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        app.close(promise: nil)
        context.close(promise: nil)
    }

    /// Backpressure: read requests only while the app takes them.
    func read(context: ChannelHandlerContext) {
        if app.isWritable { context.read() } else { pendingRead = true }
    }

    fileprivate func appWritable() {
        if pendingRead, let context {
            pendingRead = false
            context.read()
        }
    }

    /// The write of the last complete response: the caller's connection closes after it
    /// when the app closes its side.
    private var lastEnd: EventLoopFuture<Void>?

    fileprivate func forward(_ part: HTTPServerResponsePart, flush: Bool) {
        guard let context else { return }
        if case .head(let head) = part {
            span?.status = Int(head.status.code)
            span?.noteGRPCStatus(head.headers)  // a trailers-only gRPC answer
        }
        if case .end(let trailers) = part {
            if let trailers { span?.noteGRPCStatus(trailers) }
            finishServerSpan(status: nil)
            lastEnd = context.writeAndFlush(wrapOutboundOut(part))
        } else if flush {
            context.writeAndFlush(wrapOutboundOut(part), promise: nil)
        } else {
            context.write(wrapOutboundOut(part), promise: nil)
        }
    }

    fileprivate func appClosed() {
        guard let context else { return }
        let channel = context.channel
        context.flush()
        (lastEnd ?? context.eventLoop.makeSucceededVoidFuture()).whenComplete { _ in channel.close(promise: nil) }
    }
}

/// The app side: responses go back to the caller as they come.
final class AppResponseRelay: ChannelDuplexHandler {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundIn = HTTPClientRequestPart
    typealias OutboundOut = HTTPClientRequestPart

    private let gate: AuthorizationGate
    private var pendingRead = false

    init(gate: AuthorizationGate) { self.gate = gate }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head): gate.forward(.head(head), flush: false)
        case .body(let body): gate.forward(.body(.byteBuffer(body)), flush: false)
        case .end(let trailers): gate.forward(.end(trailers), flush: true)
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        gate.context?.flush()
    }

    func channelInactive(context: ChannelHandlerContext) {
        gate.appClosed()
        context.fireChannelInactive()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { gate.appWritable() }
        context.fireChannelWritabilityChanged()
    }

    func read(context: ChannelHandlerContext) {
        if gate.context?.channel.isWritable ?? true { context.read() } else { pendingRead = true }
    }
}

// MARK: - tracing

/// A server span being served: this workload's side of one traced request.
struct ServerSpan {
    let context: TraceContext
    let parent: [UInt8]
    let startNanos: UInt64
    let method: String
    let path: String
    var status = 0
    /// `grpc-status` of a gRPC answer (trailers, or the head of a trailers-only one).
    var grpcStatus: Int?

    mutating func noteGRPCStatus(_ headers: HTTPHeaders) {
        if let value = headers.first(name: "grpc-status"), let code = Int(value) { grpcStatus = code }
    }

    /// A server span is an error for a 5xx (or no answer), and for the gRPC codes that mean
    /// the server failed (OpenTelemetry's convention for gRPC servers), not the caller.
    static func isError(status: Int, grpcStatus: Int?) -> Bool {
        if status >= 500 || status == 0 { return true }
        guard let grpc = grpcStatus else { return false }
        return [2, 4, 12, 13, 14, 15].contains(grpc)  // UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS
    }
}

extension AuthorizationGate {
    /// The caller's `traceparent` (normally the client span of the caller's proxy) is
    /// continued by a server span, which becomes the parent the app sees; a request without
    /// one starts a trace.
    fileprivate func startServerSpan(_ head: inout HTTPRequestHead, path: String, tracer: Tracer) {
        let incoming = TraceContext.parse(values: head.headers["traceparent"])
        let context = tracer.context(continuing: incoming)
        head.headers.replaceOrAdd(name: "traceparent", value: context.traceparent)
        let state = incoming == nil ? nil : TraceContext.combinedTracestate(head.headers["tracestate"])
        head.headers.remove(name: "tracestate")
        if let state { head.headers.add(name: "tracestate", value: state) }
        finishServerSpan(status: 0)  // a previous one the app never answered
        span = ServerSpan(context: context, parent: incoming?.spanID ?? [], startNanos: RequestRecord.wallNanos(),
                          method: head.method.rawValue, path: path)
        workload.counters.tracedInbound.add(1)
    }

    /// `status` nil: the response's own.
    func finishServerSpan(status: Int?) {
        guard let s = span else { return }
        span = nil
        workload.counters.tracedInbound.add(-1)
        guard s.context.sampled, let telemetry = workload.telemetry, let tracer = telemetry.tracer else { return }
        let code = status ?? s.status
        let service = ServiceKey(name: workload.spec.service, namespace: workload.spec.namespace).fqdn
        var attributes: [(String, SpanRecord.Attribute)] = [
            ("http.method", .string(s.method)), ("http.url", .string(s.path)), ("http.status_code", .int(Int64(code))),
            ("istio.canonical_service", .string(telemetry.source.app)), ("istio.namespace", .string(telemetry.source.namespace)),
            ("component", .string("proxy")),
        ]
        if let principal { attributes.append(("peer.principal", .string(principal))) }
        if let grpc = s.grpcStatus { attributes.append(("rpc.grpc.status_code", .int(Int64(grpc)))) }
        tracer.finish(SpanRecord(traceID: s.context.traceID, spanID: s.context.spanID, parentSpanID: s.parent,
                                 name: "\(service):\(port)/*", kind: .server, startNanos: s.startNanos, endNanos: RequestRecord.wallNanos(),
                                 attributes: attributes, isError: ServerSpan.isError(status: code, grpcStatus: s.grpcStatus), service: telemetry.spanService))
    }
}
