import Foundation
import Glibc
import NIOCore
import NIOHTTP1
import WeftCore
import WeftTelemetry

// The L7 outbound handler's telemetry: what a request that ends is recorded as (Istio's
// metrics, the access-log line, the client span) and the trace context a request leaves
// with. The request itself is described by RequestRecord (RequestRecord.swift).

extension HTTPOutboundProxyHandler {
    /// Istio's standard request metrics (reporter=source) for the request now ending:
    /// `status`/`flags` when the mesh answered (nil: the upstream's response).
    func recordRequest(status: Int?, flags: String?) {
        guard let r = record, let telemetry = workload.telemetry else { return }
        record = nil
        let proto = r.requestProtocol
        // A keep-alive connection mostly goes to the same few endpoints: their labels (with
        // the metric series and the access log's rendering of them) are kept for the next
        // request instead of being worked out again.
        let peers: LabelCache
        let generation = workload.directory.generation
        if let known = r.knownLabels {
            peers = known
        } else if let cached = labelCache, cached.matches(r, proto: proto, generation: generation) {
            peers = cached
        } else {
            peers = newLabels(r, proto: proto, generation: generation, source: telemetry.source)
        }
        let responseCode = status ?? r.status
        let responseFlags = flags ?? "-"
        let elapsedNanoseconds = (NIODeadline.now() - r.started).nanoseconds
        let elapsed = Double(elapsedNanoseconds) / 1e6
        if let metrics = telemetry.metrics {
            metrics.record(peers.series(in: metrics, code: responseCode, flags: responseFlags, grpcStatus: r.grpcStatus),
                           durationNanoseconds: elapsedNanoseconds, requestBytes: r.requestBytes, responseBytes: r.responseBytes)
        }
        if let tracer = telemetry.tracer, let t = r.trace, t.context.sampled {
            exportSpan(r, trace: t, tracer: tracer, telemetry: telemetry, peers: peers, code: responseCode, flags: responseFlags)
        }
        if let log = telemetry.accessLog, r.described {
            r.completeLine(code: responseCode, flags: responseFlags, durationMilliseconds: elapsed, peers: peers.logPeers(in: log))
            r.writeLine(to: log)
        }
        r.finish()
    }

    /// The labels of a destination this connection has none cached for (its first request
    /// there, or the directory changed): apart from recordRequest, which runs per request,
    /// so that its code stays small.
    @inline(never)
    private func newLabels(_ r: RequestRecord, proto: String, generation: Int, source: PeerLabels) -> LabelCache {
        let labels = r.destination.flatMap {
            workload.outboundLabels(target: $0.target, service: $0.service, host: $0.host, workload: $0.workload, requestProtocol: proto)
        } ?? MeshLabels(reporter: .source, source: source, destination: .unknown,
                        service: ServiceLabels(host: "\(original.ip)", name: "PassthroughCluster", namespace: "unknown"),
                        requestProtocol: proto, securityPolicy: "none")
        let made = LabelCache(target: r.endpoint, workload: r.endpointWorkload, proto: proto, generation: generation, labels: labels)
        if r.endpoint != nil { labelCache = made }
        return made
    }

    /// The client span of a sampled request (1 % by default), to the exporter: kept out of
    /// recordRequest's code for the same reason.
    @inline(never)
    private func exportSpan(_ r: RequestRecord, trace t: RequestRecord.Trace, tracer: Tracer, telemetry: WorkloadTelemetry, peers: LabelCache,
                            code responseCode: Int, flags responseFlags: String) {
        var attributes: [(String, SpanRecord.Attribute)] = [
            ("http.method", .string(r.method.rawValue)), ("http.url", .string(r.path)), ("http.status_code", .int(Int64(responseCode))),
            ("response_flags", .string(responseFlags)), ("upstream_cluster", .string(peers.labels.service.host)),
            ("istio.canonical_service", .string(telemetry.source.app)), ("istio.namespace", .string(telemetry.source.namespace)),
            ("component", .string("proxy")), ("request_size", .int(Int64(r.requestBytes))), ("response_size", .int(Int64(r.responseBytes))),
        ]
        if let id = r.requestID { attributes.append(("guid:x-request-id", .string(id))) }
        if let target = r.endpoint { attributes.append(("peer.address", .string("\(target)"))) }
        if let grpc = Int(r.grpcStatus) { attributes.append(("rpc.grpc.status_code", .int(Int64(grpc)))) }
        tracer.finish(SpanRecord(traceID: t.context.traceID, spanID: t.context.spanID, parentSpanID: t.parentSpanID,
                                 name: "\(peers.labels.service.host):\(original.port)/*", kind: .client, startNanos: r.startWallNanos,
                                 endNanos: RequestRecord.wallNanos(), attributes: attributes,
                                 isError: responseCode >= 500 || responseCode == 0 || (Int(r.grpcStatus) ?? 0) != 0,
                                 service: telemetry.spanService))
    }
}

// MARK: - tracing

extension HTTPOutboundProxyHandler {
    /// W3C trace context for the request going out: the caller's `traceparent` continued
    /// (its sampled flag followed), or a new trace (sampled at the configured rate). This
    /// hop's client span becomes the parent the next hop sees; an invalid `traceparent` is
    /// replaced and its `tracestate` dropped, as the spec says. A request without trace
    /// context while this workload serves a traced one means the app dropped it: counted and
    /// logged.
    func startClientSpan(_ request: inout HTTPRequestHead, tracer: Tracer, seen: HTTPHeaderPolicy.RequestFacts) -> RequestRecord.Trace {
        let incoming = TraceContext.parse(values: seen.traceparents)
        let context = tracer.context(continuing: incoming, using: &requestIDs.draws)
        if seen.traceparents.isEmpty {
            request.headers.add(name: "traceparent", value: context.traceparent)
        } else {
            request.headers.replaceOrAdd(name: "traceparent", value: context.traceparent)
        }
        if incoming == nil {
            if seen.hasTracestate { request.headers.remove(name: "tracestate") }
            if workload.counters.tracedInbound.current > 0 { traceContextDropped() }
        } else if seen.hasTracestate {
            forwardTracestate(&request.headers)
        }
        record?.requestID = seen.requestID
        return RequestRecord.Trace(context: context, parent: incoming?.span)
    }

    /// The app dropped the trace context it was given (it serves a traced request, and sends
    /// one without): counted, and logged on the first and every hundredth time. Out of line,
    /// as is forwardTracestate: startClientSpan runs per request.
    @inline(never)
    private func traceContextDropped() {
        workload.counters.traceContextDropped.add(1)
        let n = workload.counters.traceContextDropped.current
        if n == 1 || n % 100 == 0 {
            workload.logger.warning("workload \(workload.spec.name) sent a request without trace context while serving a traced one: its traces break here (\(n) so far)",
                                    metadata: ["destination": "\(original)", "fix": "propagate traceparent/tracestate from inbound to outbound requests"])
        }
    }

    /// A valid context came with `tracestate`: its members combined into one header (or
    /// dropped whole when one breaks the grammar).
    @inline(never)
    private func forwardTracestate(_ headers: inout HTTPHeaders) {
        let combined = TraceContext.combinedTracestate(headers["tracestate"])
        headers.remove(name: "tracestate")
        if let combined { headers.add(name: "tracestate", value: combined) }
    }
}
