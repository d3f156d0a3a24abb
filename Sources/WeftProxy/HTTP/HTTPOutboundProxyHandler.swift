import Glibc
import Foundation
import NIOCore
import NIOHTTP1
import WeftConfig
import WeftCore
import WeftTelemetry

/// The L7 outbound path, for HTTP/1.1 and HTTP/2 alike. On an HTTP/1.1 connection it sits
/// after NIO's server codec and pipelining handler, so it sees one request at a time; on
/// HTTP/2 there is one per stream, behind NIO's HTTP/1-shaped stream codec, and its
/// upstream is a stream of a multiplexed HTTP/2 connection (trailers pass both ways). Per request: apply HTTPHeaderPolicy, pick an endpoint (per request, not per
/// connection, so keep-alive clients are balanced), take a pooled upstream connection or
/// open one from inside the netns, stream the request up and the response back with
/// backpressure both ways, then return the upstream connection to the pool.
///
/// Failures answer with a status and an `x-weft-response-flags` header (Envoy's flags):
/// UH no endpoints, UF upstream connect failure, UC upstream closed before the response,
/// NR no such port, and requests the policy refuses get 400/431/501.
final class HTTPOutboundProxyHandler: ChannelDuplexHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    /// Where requests go: pooled HTTP/1.1 connections, or streams of HTTP/2 ones.
    enum Upstreams {
        case http1(UpstreamPool)
        case http2(H2UpstreamPool)
    }

    private enum State {
        case idle
        /// Waiting for an upstream connection; request parts read meanwhile are buffered.
        case connecting(request: HTTPRequestHead, buffered: [HTTPServerRequestPart], keepAlive: Bool, responseHeaders: [HeaderOperations])
        case streaming(Exchange)
        /// An error response was sent; the rest of this request is dropped, then we close.
        case discarding
        /// The mesh answered (429) and keeps the connection: the rest of this request is
        /// dropped, then the next one is read.
        case answered
    }

    private struct Exchange {
        let upstream: Channel
        let endpoint: OriginalDestination
        /// Endpoint and transport: where the connection goes back to in the pool.
        let key: UpstreamKey
        let keepAlive: Bool
        let responseHeaders: [HeaderOperations]
        var requestEnded = false
        var responseHeadSent = false
        var responseEnded = false
        var upstreamKeepAlive = true
    }

    let workload: WorkloadContext
    let original: OriginalDestination
    private let upstreams: Upstreams
    private var isHTTP2: Bool { if case .http2 = upstreams { true } else { false } }
    /// HTTP/2: a response head that already carries grpc-status (gRPC "trailers-only"),
    /// held until we know whether a body follows; see upstreamRead.
    private var heldHead: HTTPResponseHead?
    private var state = State.idle
    /// Parts of pipelined requests read while an exchange was in progress.
    private var pipelined: [HTTPServerRequestPart] = []
    var requestIDs = RequestIDGenerator()
    /// Counts requests on this connection, so a timer knows whether its request is still on.
    private var requestSequence: UInt64 = 0
    private var timeoutTask: Scheduled<Void>?
    /// The current request's retry state (routes with `retries` only).
    private var retry: RetryAttempts?
    private var perTryTask: Scheduled<Void>?
    /// A retriable failure was not retried (attempts used up or budget spent): the answer
    /// says so, and meshed callers above do not retry it again.
    private var retriesExhausted = false
    /// The current request's connectionPool limits, the host whose concurrency slot it
    /// holds, and the host whose retry slot it holds.
    private var limits: ConnectionPool?
    private var slotHost: String?
    /// Whether the client wants the connection kept after the current request.
    private var requestKeepAlive = true
    /// Request body bytes read so far (for --max-request-body-bytes).
    private var requestBodyBytes = 0
    /// This request is one of a half-open breaker's probes: its first answer decides.
    private var breakerProbe = false
    private var retrySlotHost: String?
    static let exhaustedHeader = "x-weft-retries-exhausted"
    /// Request bodies larger than this are not kept for replay (and so not retried).
    static let maxReplayBytes = 64 * 1024
    private var clientIP: IPAddress?
    /// The client's address as the access log writes it (one per connection).
    private var clientText: String?
    private var context: ChannelHandlerContext?
    private var pendingRead = false
    /// The proxy drains (HTTP/1.1): the exchange in progress and the requests already read
    /// are answered, the last response says `connection: close`, then the connection closes.
    private var draining = false
    /// HTTP/1.1 request-headers timeout: one timer per connection, re-armed lazily (never
    /// scheduled per request); when the connection became idle (nil: a request is on), and
    /// the bytes it had read then (more since: a request is arriving, slowly).
    private var headerTimer: Scheduled<Void>?
    /// The idle timeout (--idle-timeout): reads from either side, looked at once per period.
    private var idle: IdleWatch?
    private var idleSince: NIODeadline?
    private var readAtIdle = 0
    private var wire: WireBytesCounter?
    /// The in-flight slot of the current request's endpoint (LEAST_REQUEST), returned once.
    private var lease: EndpointLease?
    /// What the metrics will say about the current request (recorded once, when it ends).
    var record: RequestRecord?
    /// The record this connection's requests reuse (made on the first one).
    private var recordStorage: RequestRecord?
    /// The labels and series of the last request's destination (see recordRequest).
    var labelCache: LabelCache?

    init(workload: WorkloadContext, original: OriginalDestination, upstreams: Upstreams) {
        self.workload = workload
        self.original = original
        self.upstreams = upstreams
    }

    var downstreamWritable: Bool { context?.channel.isWritable ?? false }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        if !isHTTP2 {
            wire = try? context.pipeline.syncOperations.handler(type: WireBytesCounter.self)
            armHeaderTimer()
        }
        if let period = workload.idleTimeout {
            // Nothing read from the app or the upstream for a whole period: the exchange (or
            // the idle connection) is over — a slow-read client included. An HTTP/2 stream
            // is reset, an HTTP/1.1 connection closed.
            let channel = context.channel
            idle = IdleWatch.start(on: channel, every: period) { [weak self] in
                guard let self else { return }
                self.workload.logger.debug("HTTP connection idle for \(period.nanoseconds / 1_000_000) ms: closed",
                                           metadata: ["workload": "\(self.workload.spec.name)"])
                if case .streaming(let exchange) = self.state, exchange.responseHeadSent {
                    channel.closeWithReset()
                } else {
                    channel.close(promise: nil)
                }
            }
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) { self.context = nil }

    // MARK: - requests from the app

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        idle?.activity &+= 1
        handle(unwrapInboundIn(data), context: context)
    }

    /// Whether the request being handled has been read to its end: anything after it is a
    /// pipelined request, held until this exchange is over.
    private var currentRequestEnded: Bool {
        switch state {
        case .idle: return false
        case .connecting(_, let buffered, _, _): return buffered.contains { if case .end = $0 { true } else { false } }
        case .streaming(let exchange): return exchange.requestEnded
        case .discarding, .answered: return false
        }
    }

    private func handle(_ part: HTTPServerRequestPart, context: ChannelHandlerContext) {
        // HTTP/1.1 pipelining: requests sent before the previous response are answered in
        // order, one at a time. Reads stop while one is held (see read()), so at most what
        // one read returned is held.
        if !pipelined.isEmpty || (currentRequestEnded && !isHTTP2) {
            pipelined.append(part)
            return
        }
        if case .body(let b) = part {
            record?.requestBytes += b.readableBytes
            if let limit = workload.maxRequestBodyBytes {
                requestBodyBytes += b.readableBytes
                if requestBodyBytes > limit, bodyOverLimit(limit, context: context) { return }
            }
        }
        switch (state, part) {
        case (.idle, .head(let head)):
            begin(head, context: context)
        case (.idle, _):
            break  // the tail of a request already answered
        case (.connecting(let request, var buffered, let keepAlive, let ops), _):
            buffered.append(part)
            keepForReplay(part)
            state = .connecting(request: request, buffered: buffered, keepAlive: keepAlive, responseHeaders: ops)
        case (.streaming(let exchange), .body(let body)):
            keepForReplay(part)
            exchange.upstream.write(HTTPClientRequestPart.body(.byteBuffer(body)), promise: nil)
        case (.streaming(var exchange), .end(let trailers)):
            keepForReplay(part)
            exchange.requestEnded = true
            state = .streaming(exchange)
            exchange.upstream.writeAndFlush(HTTPClientRequestPart.end(trailers), promise: nil)
            finishIfDone()
        case (.streaming, .head):
            break  // a pipelined head is held above
        case (.discarding, .end):
            context.close(promise: nil)
        case (.discarding, _):
            break
        case (.answered, .end):
            state = .idle
            resumePipelined()
            becameIdle()
        case (.answered, _):
            break
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if case .streaming(let exchange) = state { exchange.upstream.flush() }
    }

    /// A streamed body (chunked, HTTP/2) went over the limit: 413 while no response has
    /// started (the upstream request is abandoned), else the connection or stream is reset.
    /// Returns whether the part must be dropped.
    private func bodyOverLimit(_ limit: Int, context: ChannelHandlerContext) -> Bool {
        switch state {
        case .connecting, .streaming:
            if case .streaming(let exchange) = state, exchange.responseHeadSent {
                state = .discarding
                release(exchange.upstream)
                context.channel.closeWithReset()
            } else {
                fail(.payloadTooLarge, flags: "DPE", reason: "request body over the limit of \(limit) bytes (--max-request-body-bytes)", context: context)
            }
            return true
        case .idle, .discarding, .answered:
            return false
        }
    }

    private func begin(_ head: HTTPRequestHead, context: ChannelHandlerContext) {
        idleSince = nil  // the head is here; the timer, if any, looks again later
        workload.counters.httpRequests.add(1)
        requestKeepAlive = isHTTP2 || head.isKeepAlive
        if clientIP == nil { clientIP = context.channel.remoteAddress?.weftIP }  // once per connection
        let client = clientIP
        let telemetry = workload.telemetry
        // What the telemetry reads of the headers comes from the policy's own pass over them.
        var seen: HTTPHeaderPolicy.RequestFacts? = telemetry == nil ? nil : HTTPHeaderPolicy.RequestFacts()
        let verdict = HTTPHeaderPolicy.request(head, client: client, facts: &seen) { requestIDs.uuidString() }
        if let seen {
            let r = recordStorage ?? RequestRecord()
            recordStorage = r
            r.start(head, headerBytes: seen.bytes, contentType: seen.contentType)
            record = r
            // Described before the verdict is looked at: a refused request is logged too.
            if telemetry?.accessLog != nil {
                if clientText == nil { clientText = context.channel.remoteAddress.map { "\($0.ipAddress ?? "?"):\($0.port ?? 0)" } ?? "-" }
                r.describe(seen, http2: isHTTP2, client: clientText)
            }
        }
        var request: HTTPRequestHead
        // The verdict is consumed: the forwarded head's header list is then this request's
        // alone, and the headers the mesh adds below (traceparent, routes' header operations)
        // go into it in place instead of copying it first.
        switch consume verdict {
        case .reject(let status, let reason):
            return fail(status, flags: "DPE", reason: reason, context: context)
        case .forward(let h):
            request = h
        }
        requestBodyBytes = 0
        if let limit = workload.maxRequestBodyBytes, let declared = request.headers.first(name: "content-length").flatMap(Int.init), declared > limit {
            return fail(.payloadTooLarge, flags: "DPE", reason: "request body of \(declared) bytes is over the limit of \(limit) (--max-request-body-bytes)",
                        context: context)
        }
        if let tracer = telemetry?.tracer, let seen {
            let trace = startClientSpan(&request, tracer: tracer, seen: seen)  // not `record?.trace = …`: it writes record too
            record?.trace = trace
        }
        let target: OriginalDestination
        var responseOps: [HeaderOperations] = []
        var routed: RoutedDestination?
        var budgetKey: String?
        var facts = Self.facts(request, port: original.port)
        facts.sourceIP = client
        facts.sourceIdentity = workload.identity
        retry = nil
        retriesExhausted = false
        switch workload.directory.route(original, facts: facts) {
        case .endpoint(let endpoint, let service, _, let route, let lease):
            target = endpoint
            self.lease = lease
            if let r = record {
                // The connection's labels from its last request, when they are this
                // destination's: the record keeps them rather than the destination's names.
                if let cached = labelCache, cached.fits(endpoint: endpoint, workload: lease.workload, proto: r.requestProtocol,
                                                        generation: workload.directory.generation) {
                    r.route(to: endpoint, labels: cached)
                } else {
                    r.route(to: .init(workload: lease.workload, service: service, host: lease.host, target: endpoint))
                }
            }
            record?.routeName = route?.routeName
            routed = route
            // Only requests that may be retried count toward (and need) a retry budget.
            if route?.retries.map({ $0.attempts > 0 }) ?? false {
                budgetKey = service.description
                workload.retryBudget.value.recordRequest(service.description, now: Self.nowSeconds(context.eventLoop))
            }
            if let route {
                Self.apply(route, to: &request)
                responseOps = route.responseHeaders
            }
        case .passthrough:
            target = original
        case .noRoute(let reason):
            return fail(.notFound, flags: "NR", reason: reason, context: context)
        case .noEndpoints(let what):
            return fail(.serviceUnavailable, flags: "UH", reason: "no healthy upstream for \(what)", context: context)
        case .unknownPort(let reason):
            return fail(.notFound, flags: "NR", reason: reason, context: context)
        }
        guard let address = try? target.socketAddress else {
            return fail(.serviceUnavailable, flags: "UF", reason: "bad upstream address \(target)", context: context)
        }
        breakerProbe = false
        if let host = lease?.host {
            switch workload.directory.breakerAdmit(host: host, now: context.eventLoop.now.uptimeNanoseconds) {
            case .allow:
                break
            case .probe:
                breakerProbe = true
            case .reject(let wait):
                return fail(.serviceUnavailable, flags: "UO",
                            reason: "the circuit breaker of \(host) is open; probes resume in \(Int(wait.rounded(.up))) s", context: context)
            }
            let now = context.eventLoop.now.uptimeNanoseconds
            facts.routeName = routed?.routeName
            var (verdict, global) = workload.directory.checkRateLimits(host: host, facts: facts, client: client, now: now)
            if verdict == .allow, !global.isEmpty {
                switch workload.directory.globalLimits.check(global, now: now, on: context.eventLoop) {
                case .done(let v):
                    verdict = v
                case .wait(let decided):
                    // Waiting for a lease of the mesh-wide bucket: parts read meanwhile are held.
                    let admission = Admission(request: request, routed: routed, facts: facts, budgetKey: budgetKey,
                                              responseOps: responseOps, keepAlive: isHTTP2 || head.isKeepAlive, target: target, address: address)
                    requestSequence &+= 1
                    let sequence = requestSequence
                    state = .connecting(request: request, buffered: [], keepAlive: admission.keepAlive, responseHeaders: responseOps)
                    let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
                    decided.whenSuccess { verdict in
                        let handler = bound.value
                        guard handler.requestSequence == sequence, case .connecting(_, let buffered, _, _) = handler.state,
                              let context = handler.context else { return }
                        if case .limited(let policy, let limit, let rate, let unit, let wait) = verdict {
                            return handler.rateLimited(policy: policy, limit: limit, rate: rate, unit: unit, retryAfter: wait, context: context)
                        }
                        handler.admit(admission, buffered: buffered, context: context)
                    }
                    return
                }
            }
            if case .limited(let policy, let limit, let rate, let unit, let wait) = verdict {
                return rateLimited(policy: policy, limit: limit, rate: rate, unit: unit, retryAfter: wait, context: context)
            }
        }
        admit(Admission(request: request, routed: routed, facts: facts, budgetKey: budgetKey, responseOps: responseOps,
                        keepAlive: isHTTP2 || head.isKeepAlive, target: target, address: address), buffered: [], context: context)
    }

    /// What `begin` decided about a request that the rate limits let through.
    private struct Admission {
        var request: HTTPRequestHead
        let routed: RoutedDestination?
        let facts: RequestFacts
        let budgetKey: String?
        let responseOps: [HeaderOperations]
        let keepAlive: Bool
        let target: OriginalDestination
        let address: SocketAddress
    }

    /// Faults, deadline, retries and the host's concurrency limit; then the upstream.
    /// `buffered`: parts read while a global rate limit's lease was awaited.
    private func admit(_ admission: Admission, buffered: [HTTPServerRequestPart], context: ChannelHandlerContext) {
        var request = admission.request
        let routed = admission.routed, facts = admission.facts, budgetKey = admission.budgetKey
        let responseOps = admission.responseOps, target = admission.target, address = admission.address
        let plan = FaultPlan.decide(routed?.fault, delayDraw: requestIDs.nextUnit(), abortDraw: requestIDs.nextUnit())
        if let status = plan.abortStatus {
            return fail(HTTPResponseStatus(statusCode: status), flags: "FI", reason: "fault injected by route \(routed?.routeName ?? "")", context: context)
        }
        requestSequence &+= 1
        // The shorter of the route's timeout and the caller's remaining time; the next hop
        // is told how long it has.
        let timeout = Deadline.effective(route: routed?.timeout, headers: request.headers)
        if let timeout { request.headers.replaceOrAdd(name: Deadline.header, value: "\(max(1, Deadline.milliseconds(timeout)))") }
        if let policy = routed?.retries.map(RetryPolicy.init), policy.attempts > 0 {
            retry = RetryAttempts(policy: policy, method: request.method, request: request, facts: facts, routed: routed,
                                  budgetKey: budgetKey ?? "\(original)",
                                  budget: lease.flatMap { workload.directory.retryBudgetPolicy(host: $0.host) })
        }
        state = .connecting(request: request, buffered: buffered, keepAlive: admission.keepAlive, responseHeaders: responseOps)
        for part in buffered { keepForReplay(part) }
        if let timeout { armTimeout(timeout, context: context) }
        limits = lease?.limits
        if let host = lease?.limiterKey, let limits = lease?.limits {
            // The circuit breaker: a slot in the host's concurrency limit, a wait, or 503 UO.
            let sequence = requestSequence
            let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
            let admission = workload.limiter.value.admit(
                host, limit: ConnectionLimiter.concurrency(limits, http2: isHTTP2), maxPending: limits.http1MaxPendingRequests) {
                    let handler = bound.value
                    guard handler.requestSequence == sequence, case .connecting = handler.state else { return false }
                    handler.slotHost = host
                    handler.proceed(plan: plan, target: target, address: address)
                    return true
                }
            switch admission {
            case .granted:
                slotHost = host
            case .queued:
                return
            case .overflow:
                return fail(.serviceUnavailable, flags: "UO",
                            reason: "upstream overflow: the connectionPool limits of \(host) are reached (circuit breaker open)", context: context)
            }
        }
        proceed(plan: plan, target: target, address: address)
    }

    /// After admission: an injected delay, then the upstream.
    private func proceed(plan: FaultPlan, target: OriginalDestination, address: SocketAddress) {
        guard let context else { return }
        if let delay = plan.delay {
            // Held as if connecting (parts read meanwhile are buffered), then dispatched.
            let sequence = requestSequence
            let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
            context.eventLoop.scheduleTask(in: TimeAmount(delay)) {
                let handler = bound.value
                guard handler.requestSequence == sequence, case .connecting = handler.state else { return }
                handler.dispatch(to: target, address: address)
            }
            return
        }
        dispatch(to: target, address: address)
    }

    /// Takes a pooled upstream connection (or stream) to `target`, or opens one.
    private func dispatch(to target: OriginalDestination, address: SocketAddress) {
        guard let context else { return }
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        let connecting: EventLoopFuture<Channel>
        let workloadKey = workload.upstreamKey(target)
        switch upstreams {
        case .http1(let pool):
            let key = workloadKey
            if let pooled = pool.take(key) {
                attach(pooled, endpoint: key)
                return
            }
            let connectTimeout = limits?.connectTimeout.map(TimeAmount.init) ?? workload.connectTimeout
            connecting = workload.dial(key, proto: "http/1.1", timeout: connectTimeout, tcpInitializer: { channel in
                // One read per readiness event (see HTTPPath); TCP channels only.
                try channel.syncOptions?.setOption(.maxMessagesPerRead, value: 1)
            }, initializer: { channel in
                // Request heads were parsed by NIO's decoder or come from checked config: no
                // second validation pass (see HTTPPath.startHTTP1).
                try channel.pipeline.syncOperations.addHTTPClientHandlers(enableOutboundHeaderValidation: false)
                try channel.pipeline.syncOperations.addHandler(UpstreamHTTPHandler())
            })
        case .http2(let pool):
            connecting = pool.openStream(to: workloadKey, workload: workload)
        }
        connecting.whenComplete { result in
            let handler = loopBound.value
            switch result {
            case .success(let channel):
                _ = channel.setOption(.autoRead, value: true)
                handler.attach(channel, endpoint: workloadKey)
            case .failure(let error):
                handler.reportOutcome(nil)
                if handler.retryAfter(Self.isRefusedStream(error) ? .refusedStream : .connectFailure) { return }
                handler.fail(.serviceUnavailable, flags: "UF", reason: "upstream connect error (\(target)): \(WorkloadContext.describe(error))",
                             context: nil)
            }
        }
    }

    static func facts(_ head: HTTPRequestHead, port: UInt16) -> RequestFacts {
        let path = head.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? head.uri
        return RequestFacts(method: head.method.rawValue, path: path, head: head.headers, port: port)
    }

    /// The route's rewrite and request header operations, in Istio's order (route, then
    /// destination).
    static func apply(_ route: RoutedDestination, to request: inout HTTPRequestHead) {
        if let rewrite = route.rewrite {
            if let uri = rewrite.uri {
                let parts = request.uri.split(separator: "?", maxSplits: 1)
                let path = RouteTable.rewritePath(String(parts.first ?? ""), rewrite: uri, match: route.matchedURI)
                request.uri = parts.count == 2 ? "\(path)?\(parts[1])" : path
            }
            if let authority = rewrite.authority { request.headers.replaceOrAdd(name: "host", value: authority) }
        }
        for ops in route.requestHeaders { apply(ops, to: &request.headers) }
    }

    static func apply(_ ops: HeaderOperations, to headers: inout HTTPHeaders) {
        for (name, value) in ops.set.sorted(by: { $0.key < $1.key }) { headers.replaceOrAdd(name: name, value: value) }
        for (name, value) in ops.add.sorted(by: { $0.key < $1.key }) { headers.add(name: name, value: value) }
        for name in ops.remove { headers.remove(name: name) }
    }

    private func attach(_ upstream: Channel, endpoint key: UpstreamKey) {
        let endpoint = key.endpoint
        guard case .connecting(let request, let buffered, let keepAlive, let responseOps) = state else {
            upstream.close(promise: nil)  // the client went away meanwhile
            return
        }
        guard let handler = try? upstream.pipeline.syncOperations.handler(type: UpstreamHTTPHandler.self) else {
            upstream.close(promise: nil)
            return
        }
        handler.owner = self
        handler.uses += 1
        var exchange = Exchange(upstream: upstream, endpoint: endpoint, key: key, keepAlive: keepAlive, responseHeaders: responseOps)
        guard upstream.isActive else {
            // Reset between the handshake and now: its channelInactive found no owner yet.
            state = .streaming(exchange)
            upstreamClosed(error: nil)
            return
        }
        // The state is .streaming before the first write: a write into a connection the peer
        // has just reset closes it at once, and its channelInactive must find this exchange
        // (and answer 503 UC) rather than a request still "connecting" that nobody answers.
        exchange.requestEnded = buffered.contains { if case .end = $0 { true } else { false } }
        state = .streaming(exchange)
        upstream.write(HTTPClientRequestPart.head(request), promise: nil)
        for part in buffered {
            switch part {
            case .body(let b):
                upstream.write(HTTPClientRequestPart.body(.byteBuffer(b)), promise: nil)
            case .end(let t):
                upstream.write(HTTPClientRequestPart.end(t), promise: nil)
            case .head:
                break
            }
        }
        upstream.flush()
        guard case .streaming(let current) = state, current.upstream === upstream else { return }  // failed meanwhile
        if let perTry = retry?.policy.perTryTimeout { armPerTry(perTry) }
        if pendingRead, upstream.isWritable {
            pendingRead = false
            context?.read()
        }
    }

    // MARK: - responses from the upstream

    func upstreamRead(_ part: HTTPClientResponsePart) {
        idle?.activity &+= 1
        guard case .streaming(var exchange) = state, let context else { return }
        switch part {
        case .head(let head):
            cancelPerTry()
            reportOutcome(Int(head.status.code))
            if retry != nil, !head.headers.contains(name: Self.exhaustedHeader) {
                let grpc = head.headers.first(name: "grpc-status").flatMap { Int($0) }
                let failure = AttemptFailure.status(Int(head.status.code), grpc: grpc)
                if retryAfter(failure) { return }
            }
            retry = nil  // a response is on its way to the client: nothing left to replay
            exchange.responseHeadSent = true
            exchange.upstreamKeepAlive = head.isKeepAlive
            // What the telemetry reads of the head comes from the policy's pass over it.
            var seen: HTTPHeaderPolicy.ResponseFacts? = record == nil ? nil : .init()
            var out = HTTPHeaderPolicy.response(head, keepClientAlive: exchange.keepAlive && !(draining && pipelined.isEmpty),
                                                facts: &seen, gRPC: record?.isGRPC ?? false)
            if let seen { record?.response(head.status, facts: seen) }
            if retriesExhausted { out.headers.replaceOrAdd(name: Self.exhaustedHeader, value: "true") }
            for ops in exchange.responseHeaders { Self.apply(ops, to: &out.headers) }
            if isHTTP2, out.headers.contains(name: "grpc-status") {
                heldHead = out
            } else {
                context.write(wrapOutboundOut(.head(out)), promise: nil)
            }
        case .body(let body):
            if let held = heldHead {
                heldHead = nil
                context.write(wrapOutboundOut(.head(held)), promise: nil)
            }
            record?.responseBytes += body.readableBytes
            context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
        case .end(var trailers):
            exchange.responseEnded = true
            if let status = trailers?.first(name: "grpc-status") { record?.grpcStatus = status }
            if var held = heldHead {
                // A trailers-only gRPC response (status in the one HEADERS frame) cannot be
                // re-sent as one frame through the HTTP/1-shaped codec: send the status as
                // trailers after the head instead, which every gRPC client reads the same.
                heldHead = nil
                var moved = trailers ?? HTTPHeaders()
                for name in ["grpc-status", "grpc-message", "grpc-status-details-bin"] {
                    for value in held.headers[name] { moved.add(name: name, value: value) }
                    held.headers.remove(name: name)
                }
                trailers = moved
                context.write(wrapOutboundOut(.head(held)), promise: nil)
            }
            context.writeAndFlush(wrapOutboundOut(.end(trailers)), promise: nil)
        }
        state = .streaming(exchange)
        finishIfDone()
    }

    func upstreamReadComplete() {
        context?.flush()
    }

    func upstreamWritabilityChanged(_ writable: Bool) {
        if writable, pendingRead {
            pendingRead = false
            context?.read()
        }
    }

    func upstreamClosed(error: Error?) {
        guard case .streaming(let exchange) = state, !exchange.responseEnded else { return }
        if exchange.responseHeadSent {
            // Part of the response is already with the client: the only honest signal left
            // is to cut the connection.
            releaseSlots()
            state = .idle
            endLease()
            release(exchange.upstream)
            context?.channel.closeWithReset()
        } else {
            reportOutcome(nil)
            if retryAfter(.reset) { return }
            fail(.serviceUnavailable, flags: "UC",
                 reason: "upstream \(exchange.endpoint) closed before responding" + (error.map { ": \(WorkloadContext.describe($0))" } ?? ""),
                 context: nil)
        }
    }

    /// After both directions ended: recycle the upstream, and close the client side if it
    /// asked for it.
    private func endLease() {
        if let lease {
            self.lease = nil
            workload.directory.release(lease)
        }
    }

    /// The route's whole-request timeout: 504 `UT` if no response head was sent in time,
    /// else the connection is reset (the only honest signal once a response has started).
    private func armTimeout(_ timeout: Duration, context: ChannelHandlerContext) {
        let sequence = requestSequence
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        timeoutTask = context.eventLoop.scheduleTask(in: TimeAmount(timeout)) {
            let handler = bound.value
            guard handler.requestSequence == sequence else { return }
            switch handler.state {
            case .connecting, .streaming:
                handler.fail(.gatewayTimeout, flags: "UT", reason: "upstream request timeout (\(timeout))", context: nil)
            case .idle, .discarding, .answered:
                break
            }
        }
    }

    // MARK: - rate limits

    /// 429 with `retry-after` (whole seconds, at least 1) and the IETF draft's RateLimit
    /// headers; the connection stays open (the rest of the request is read and dropped).
    private func rateLimited(policy: String, limit: String, rate: Int, unit: String, retryAfter: Double, context: ChannelHandlerContext) {
        endLease()
        recordRequest(status: 429, flags: "RL")
        workload.counters.httpRateLimited.add(1)
        let body = "rate limited by \(policy) (\(limit): \(rate) per \(unit))\n"
        var headers = HTTPHeaders()
        headers.add(name: "content-type", value: "text/plain; charset=utf-8")
        headers.add(name: "content-length", value: "\(body.utf8.count)")
        headers.add(name: "retry-after", value: "\(max(1, Int(retryAfter.rounded(.up))))")
        headers.add(name: "ratelimit-limit", value: "\(rate)")
        headers.add(name: "ratelimit-remaining", value: "0")
        headers.add(name: "ratelimit-reset", value: "\(max(1, Int(retryAfter.rounded(.up))))")
        headers.add(name: "x-weft-response-flags", value: "RL")
        // Refused after waiting for a global limit's lease: the request may have been read whole.
        var ended = false
        if case .connecting(_, let buffered, _, _) = state { ended = buffered.contains { if case .end = $0 { true } else { false } } }
        state = ended ? .idle : .answered
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .tooManyRequests, headers: headers))), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(string: body)))), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        if ended { resumePipelined() }
    }

    // MARK: - retries

    static func nowSeconds(_ loop: EventLoop) -> Int64 { Int64(loop.now.uptimeNanoseconds / 1_000_000_000) }

    static func isRefusedStream(_ error: Error) -> Bool {
        "\(error)".contains("refusedStream")
    }

    private func keepForReplay(_ part: HTTPServerRequestPart) {
        guard var r = retry, r.replayable else { return }
        retry = nil  // avoid a copy-on-write of the parts array
        if case .body(let b) = part { r.keptBytes += b.readableBytes }
        if r.keptBytes > Self.maxReplayBytes {
            r.replayable = false
            r.kept = []
        } else {
            r.kept.append(part)
        }
        retry = r
    }

    private func armPerTry(_ timeout: Duration) {
        guard let context else { return }
        let sequence = requestSequence
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        perTryTask = context.eventLoop.scheduleTask(in: TimeAmount(timeout)) {
            let handler = bound.value
            guard handler.requestSequence == sequence, case .streaming(let exchange) = handler.state, !exchange.responseHeadSent else { return }
            handler.reportOutcome(nil)
            if handler.retryAfter(.perTryTimeout) { return }
            handler.fail(.gatewayTimeout, flags: "UT", reason: "upstream per-try timeout (\(timeout))", context: nil)
        }
    }

    private func cancelPerTry() {
        perTryTask?.cancel()
        perTryTask = nil
    }

    /// A failed attempt: starts the next one (after a jittered backoff, on another endpoint
    /// of the same destination when there is one) if the route retries this failure, the
    /// request can be replayed, attempts remain and the service's retry budget allows.
    /// Returns false when the caller must answer the failure itself.
    private func retryAfter(_ failure: AttemptFailure) -> Bool {
        guard var r = retry, let context else { return false }
        var keepAlive = true
        var responseOps: [HeaderOperations] = []
        switch state {
        case .connecting(_, _, let k, let ops):
            keepAlive = k
            responseOps = ops
        case .streaming(let exchange):
            guard !exchange.responseHeadSent else { return false }
            keepAlive = exchange.keepAlive
            responseOps = exchange.responseHeaders
        case .idle, .discarding, .answered:
            return false
        }
        guard r.policy.retries(failure, method: r.method, nonIdempotentOptIn: r.budget?.retryNonIdempotent ?? false) else { return false }
        let now = context.eventLoop.now.uptimeNanoseconds
        guard r.replayable, r.retriesDone < r.policy.attempts else {
            giveUpRetrying(now: now)
            return false
        }
        if case .status = failure, workload.retryBudget.value.settings.enabled, let failed = lease,
           workload.directory.recentlyExhausted(workload: failed.workload, now: now) {
            // The endpoint is failing because its own upstreams fail, and it already retried
            // them: retrying here would multiply the load on what is already down.
            workload.counters.httpRetriesDenied.add(1)
            giveUpRetrying(now: now)
            return false
        }
        if retrySlotHost == nil, let host = lease?.limiterKey, let limits {
            guard workload.limiter.value.tryRetry(host, max: limits.maxRetries) else {
                workload.counters.httpRetriesDenied.add(1)
                giveUpRetrying(now: now)
                return false
            }
            retrySlotHost = host
        }
        guard workload.retryBudget.value.tryRetry(r.budgetKey, now: Self.nowSeconds(context.eventLoop), override: r.budget) else {
            workload.counters.httpRetriesDenied.add(1)
            giveUpRetrying(now: now)
            return false
        }
        r.retriesDone += 1
        workload.counters.httpRetries.add(1)
        // Tear the failed attempt down; the replay copy becomes the buffered request.
        cancelPerTry()
        let failedLease = lease
        endLease()
        if case .streaming(let exchange) = state { release(exchange.upstream) }
        state = .connecting(request: r.request, buffered: r.kept, keepAlive: keepAlive, responseHeaders: responseOps)
        retry = r
        let sequence = requestSequence
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        let wait = RetryPolicy.backoff(retry: r.retriesDone, draw: requestIDs.nextUnit())
        context.eventLoop.scheduleTask(in: wait) {
            let handler = bound.value
            guard handler.requestSequence == sequence, case .connecting = handler.state, let r = handler.retry else { return }
            switch handler.workload.directory.retarget(handler.original, routed: r.routed, facts: r.facts, avoiding: failedLease) {
            case .endpoint(let endpoint, _, _, _, let lease):
                handler.lease = lease
                guard let address = try? endpoint.socketAddress else {
                    return handler.fail(.serviceUnavailable, flags: "UF", reason: "bad upstream address \(endpoint)", context: nil)
                }
                handler.dispatch(to: endpoint, address: address)
            case .passthrough:
                guard let address = try? handler.original.socketAddress else { return }
                handler.dispatch(to: handler.original, address: address)
            case .noEndpoints(let what):
                handler.fail(.serviceUnavailable, flags: "UH", reason: "no healthy upstream for \(what)", context: nil)
            case .noRoute(let reason), .unknownPort(let reason):
                handler.fail(.notFound, flags: "NR", reason: reason, context: nil)
            }
        }
        return true
    }

    /// Feeds outlier detection with the current attempt's answer (nil: no answer at all).
    func reportOutcome(_ status: Int?) {
        guard let lease, let loop = context?.eventLoop else { return }
        workload.directory.recordOutcome(lease, status: status, probe: breakerProbe, now: loop.now.uptimeNanoseconds)
        breakerProbe = false
    }

    private func releaseSlots() {
        if let host = slotHost {
            slotHost = nil
            workload.limiter.value.release(host)
        }
        if let host = retrySlotHost {
            retrySlotHost = nil
            workload.limiter.value.releaseRetry(host)
        }
    }

    private func giveUpRetrying(now: UInt64) {
        retriesExhausted = true
        workload.directory.noteRetriesExhausted(workload: workload.spec.name, now: now)
    }

    private func cancelTimeout() {
        timeoutTask?.cancel()
        timeoutTask = nil
    }

    private func finishIfDone() {
        guard case .streaming(let exchange) = state, exchange.requestEnded, exchange.responseEnded else { return }
        recordRequest(status: nil, flags: retriesExhausted ? "URX" : nil)
        cancelTimeout()
        cancelPerTry()
        retry = nil
        state = .idle
        endLease()
        let upstreamHandler = try? exchange.upstream.pipeline.syncOperations.handler(type: UpstreamHTTPHandler.self)
        let spent = (limits?.maxRequestsPerConnection).map { $0 > 0 && (upstreamHandler?.uses ?? 0) >= $0 } ?? false
        releaseSlots()
        if case .http1(let pool) = upstreams, exchange.upstreamKeepAlive, !spent {
            upstreamHandler?.owner = nil
            pool.give(exchange.upstream, for: exchange.key,
                      idleTimeout: limits?.idleTimeout.map(TimeAmount.init))
        } else {
            release(exchange.upstream)  // an HTTP/2 stream is done once both ends ended
        }
        if !exchange.keepAlive {
            pipelined = []
            context?.close(promise: nil)
            return
        }
        resumePipelined()
        becameIdle()
    }

    /// Nothing left to answer (HTTP/1.1): draining, close (the response said so); else the
    /// next request head is awaited, within the request-headers timeout.
    private func becameIdle() {
        guard !isHTTP2, case .idle = state, pipelined.isEmpty else { return }
        if draining {
            context?.close(promise: nil)
        } else {
            armHeaderTimer()
        }
    }

    private func armHeaderTimer() {
        guard let timeout = workload.requestHeadersTimeout, let context else { return }
        idleSince = .now()
        readAtIdle = wire?.bytesRead ?? 0
        if headerTimer == nil { scheduleHeaderCheck(in: timeout, context: context) }
    }

    private func scheduleHeaderCheck(in delay: TimeAmount, context: ChannelHandlerContext) {
        let handler = NIOLoopBound(self, eventLoop: context.eventLoop)
        headerTimer = context.eventLoop.scheduleTask(in: delay) { handler.value.checkHeaders() }
    }

    /// The timer fired: a request on, or idle for less than the timeout — look again later;
    /// idle for the whole timeout — time out.
    private func checkHeaders() {
        headerTimer = nil
        guard let timeout = workload.requestHeadersTimeout, let context else { return }
        guard let since = idleSince, case .idle = state, pipelined.isEmpty else {
            return scheduleHeaderCheck(in: timeout, context: context)
        }
        let waited = NIODeadline.now() - since
        if waited < timeout { return scheduleHeaderCheck(in: timeout - waited, context: context) }
        headersTimedOut(after: timeout)
    }

    /// No whole request head in time: a request that had started arriving gets 408 (a
    /// slowloris client), a connection that sent nothing is closed quietly (idle keep-alive).
    private func headersTimedOut(after timeout: TimeAmount) {
        guard let context else { return }
        idleSince = nil
        let ms = timeout.nanoseconds / 1_000_000
        guard (wire?.bytesRead ?? 0) > readAtIdle else {
            workload.logger.debug("idle HTTP/1.1 connection closed: no request within \(ms) ms", metadata: ["destination": "\(original)"])
            context.close(promise: nil)
            return
        }
        workload.counters.httpErrors.add(1)
        workload.logger.notice("outbound HTTP 408: request headers not received within \(ms) ms", metadata: ["destination": "\(original)"])
        state = .discarding
        let body = "request headers not received within \(ms) ms\n"
        var headers = HTTPHeaders()
        headers.add(name: "content-type", value: "text/plain; charset=utf-8")
        headers.add(name: "content-length", value: "\(body.utf8.count)")
        headers.add(name: "connection", value: "close")
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .requestTimeout, headers: headers))), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(string: body)))), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in context.close(promise: nil) }
    }

    /// The exchange is over: handle what was pipelined behind it, then read again.
    private func resumePipelined() {
        guard let context else { return }
        while !pipelined.isEmpty, case .idle = state {
            let parts = pipelined
            pipelined = []
            for (i, part) in parts.enumerated() {
                handle(part, context: context)
                if !pipelined.isEmpty {  // the next request is pipelined behind this one
                    pipelined += parts[(i + 1)...]
                    break
                }
            }
        }
        if pipelined.isEmpty, pendingRead {
            pendingRead = false
            read(context: context)
        }
    }

    /// Stops listening to an upstream connection and closes it. The owner is cleared first:
    /// closing fires channelInactive synchronously, which must not re-enter this handler.
    private func release(_ upstream: Channel) {
        if let handler = try? upstream.pipeline.syncOperations.handler(type: UpstreamHTTPHandler.self) {
            handler.owner = nil
        }
        upstream.close(promise: nil)
    }

    /// Answers the current request with an error and stops using this connection. The new
    /// state is set before any side effect, so a re-entrant call finds nothing to answer.
    private func fail(_ status: HTTPResponseStatus, flags: String, reason: String, context given: ChannelHandlerContext?) {
        endLease()
        cancelTimeout()
        cancelPerTry()
        retry = nil
        releaseSlots()
        guard let context = given ?? self.context else { return }
        let previous = state
        var requestEnded = false
        var upstream: Channel?
        switch previous {
        case .connecting(_, let buffered, _, _):
            requestEnded = buffered.contains { if case .end = $0 { return true } else { return false } }
        case .streaming(let exchange):
            guard !exchange.responseHeadSent else {
                state = .idle
                release(exchange.upstream)
                context.channel.closeWithReset()
                return
            }
            requestEnded = exchange.requestEnded
            upstream = exchange.upstream
        case .discarding, .answered:
            return  // already answered
        case .idle:
            break
        }
        recordRequest(status: Int(status.code), flags: flags)
        // The connection stays usable unless the request itself was refused (DPE: its framing
        // cannot be trusted) or the client asked to close: the rest of the request is read
        // and dropped, then the next one is served.
        let keepOpen = flags != "DPE" && requestKeepAlive
        state = requestEnded ? .idle : (keepOpen ? .answered : .discarding)
        if let upstream { release(upstream) }
        workload.counters.httpErrors.add(1)
        workload.logger.notice("outbound HTTP \(status.code) \(flags): \(reason)", metadata: ["destination": "\(original)"])
        let body = "\(reason)\n"
        var headers = HTTPHeaders()
        headers.add(name: "content-type", value: "text/plain; charset=utf-8")
        headers.add(name: "content-length", value: "\(body.utf8.count)")
        headers.add(name: "x-weft-response-flags", value: flags)
        if !isHTTP2, !keepOpen { headers.add(name: "connection", value: "close") }
        if retriesExhausted { headers.add(name: Self.exhaustedHeader, value: "true") }
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(string: body)))), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        if requestEnded {
            if keepOpen {
                resumePipelined()
                becameIdle()
            } else {
                context.close(promise: nil)
            }
        }
    }

    // MARK: - the app's connection

    func channelInactive(context: ChannelHandlerContext) {
        abandon()
        context.fireChannelInactive()
    }

    /// The client went away mid-request: the request is counted as `DC`, its timers, slots,
    /// endpoint lease and upstream are given up.
    private func abandon() {
        headerTimer?.cancel()
        headerTimer = nil
        recordRequest(status: 0, flags: "DC")
        cancelTimeout()
        cancelPerTry()
        retry = nil
        releaseSlots()
        let previous = state
        state = .idle
        endLease()
        if case .streaming(let exchange) = previous { release(exchange.upstream) }
    }

    /// A malformed request (NIO's HTTPServerProtocolErrorHandler, before us, has already
    /// answered 400) or a failed connection: this exchange is over. No further response may
    /// be written (NIO's pipelining handler traps on a second one), the upstream is released
    /// and the connection closed at once rather than left to the client's timeout.
    func errorCaught(context: ChannelHandlerContext, error: Error) {
        releaseSlots()
        let previous = state
        state = .discarding
        endLease()
        if case .streaming(let exchange) = previous { release(exchange.upstream) }
        workload.logger.notice("outbound HTTP request refused: \(error)", metadata: ["destination": "\(original)"])
        workload.counters.httpErrors.add(1)
        context.close(promise: nil)
    }

    /// HTTP/1.1: the client closed its side while its request was still being served — it
    /// went away (curl -m, a killed caller), as nginx and Envoy read it: the request is
    /// abandoned (`DC`), the upstream released, the connection closed. HTTP/2 streams end
    /// with END_STREAM instead and never get here.
    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is ProxyDrainEvent, !isHTTP2 {
            draining = true
            becameIdle()
            return
        }
        if !isHTTP2, let e = event as? ChannelEvent, case .inputClosed = e {
            switch state {
            case .connecting, .streaming:
                abandon()
                workload.logger.debug("the client closed its connection before the response", metadata: ["destination": "\(original)"])
                context.close(promise: nil)
                return
            case .idle, .discarding, .answered:
                break
            }
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable, case .streaming(let exchange) = state,
           let handler = try? exchange.upstream.pipeline.syncOperations.handler(type: UpstreamHTTPHandler.self),
           let upstreamContext = try? exchange.upstream.pipeline.syncOperations.context(handlerType: UpstreamHTTPHandler.self) {
            handler.resumeReading(context: upstreamContext)
        }
        context.fireChannelWritabilityChanged()
    }

    /// Backpressure: read the request only while the upstream can take it.
    func read(context: ChannelHandlerContext) {
        if !pipelined.isEmpty {
            pendingRead = true  // resumes once the held requests are handled
            return
        }
        switch state {
        case .streaming(let exchange) where !exchange.upstream.isWritable:
            pendingRead = true
        case .connecting:
            pendingRead = true  // resumes once attached
        default:
            context.read()
        }
    }
}
