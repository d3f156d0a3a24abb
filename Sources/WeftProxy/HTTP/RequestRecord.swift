import Foundation
import Glibc
import NIOCore
import NIOHTTP1
import WeftCore
import WeftTelemetry

/// The labels of the last destination a connection's requests went to (without the
/// response's), the metric series of its last response and the access log's rendering of
/// it: a class, checked and read per request without copying the ~20 label strings.
final class LabelCache {
    let target: OriginalDestination?
    let workload: String
    let proto: String
    let generation: Int
    let labels: MeshLabels
    /// The last response's series and what it was for (kept apart, not as an optional tuple:
    /// compared in place on every request, never copied out).
    private var lastSeries: MeshMetrics.RequestSeries?
    private var lastCode = -1
    private var lastFlags = ""
    private var lastGRPCStatus = ""
    private var peers: AccessLogPeers?

    init(target: OriginalDestination?, workload: String, proto: String, generation: Int, labels: MeshLabels) {
        self.target = target
        self.workload = workload
        self.proto = proto
        self.generation = generation
        self.labels = labels
    }

    /// Whether these are the labels of `r`'s destination.
    func matches(_ r: RequestRecord, proto: String, generation: Int) -> Bool {
        r.endpoint.map { fits(endpoint: $0, workload: r.endpointWorkload, proto: proto, generation: generation) } ?? false
    }

    /// Whether these are the labels of requests to `endpoint` (of `workload`) with `proto`,
    /// the directory being at `generation`.
    func fits(endpoint: OriginalDestination, workload: String, proto: String, generation: Int) -> Bool {
        self.generation == generation && target == endpoint && self.workload == workload && self.proto == proto
    }

    /// The series of these labels with this response (looked up when it differs from the last).
    func series(in metrics: MeshMetrics, code: Int, flags: String, grpcStatus: String) -> MeshMetrics.RequestSeries {
        if let lastSeries, lastCode == code, lastFlags == flags, lastGRPCStatus == grpcStatus { return lastSeries }
        var full = labels
        full.responseCode = code
        full.responseFlags = flags
        full.grpcStatus = grpcStatus
        let series = metrics.requestSeries(full)
        (lastSeries, lastCode, lastFlags, lastGRPCStatus) = (series, code, flags, grpcStatus)
        return series
    }

    /// The access log's fields for these peers (the log's shared rendering, looked up on
    /// first use).
    func logPeers(in log: AccessLog) -> AccessLogPeers {
        if let peers { return peers }
        let made = log.peers(labels, upstream: target)
        peers = made
        return made
    }
}

/// One request as the metrics, the access log and the trace see it. A class, one per
/// connection (or HTTP/2 stream), reused for each of its requests: the handler fills it in
/// as the exchange goes (`start` resets every field) and the telemetry reads it at the end,
/// without allocating or copying anything per request.
final class RequestRecord {
    struct Destination {
        let workload: String
        let service: ServiceKey
        let host: String
        let target: OriginalDestination
    }

    private(set) var started = NIODeadline.uptimeNanoseconds(0)
    private(set) var startWallNanos: UInt64 = 0
    private(set) var isGRPC = false
    /// Istio's `request_protocol` label for this request.
    var requestProtocol: String { isGRPC ? "grpc" : "http" }
    private(set) var method = HTTPMethod.GET
    /// The request's access-log line, filled in as the request goes and logged where it is
    /// (`writeLine(to:)`): its strings are set once and released once, never copied into a
    /// new entry per request. Its request fields are the record's too (`uri`, `routeName`),
    /// whether the log is on or not.
    private(set) var line = RequestLogEntry()
    /// The request target as sent; `path` (without the query) is only worked out for the
    /// spans that are sampled.
    var uri: String { line.path }
    var path: String { uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? uri }
    var requestID: String?
    /// This hop's client span: its context (sent on as `traceparent`) and its parent.
    struct Trace {
        let context: TraceContext
        /// The caller's span (nil: this hop starts the trace).
        let parent: UInt64?
        var parentSpanID: [UInt8] { parent.map(TraceContext.bytes) ?? [] }
    }
    var trace: Trace?
    var routeName: String? {
        get { line.routeName }
        set { line.routeName = newValue }
    }
    var requestBytes = 0
    var responseBytes = 0
    var status = 0
    var grpcStatus = ""
    private(set) var destination: Destination?
    /// The destination's endpoint and workload, kept apart too: compared with a connection's
    /// cached labels per request, without copying the whole destination (and retaining its
    /// strings) out of the record.
    private(set) var endpoint: OriginalDestination?
    private(set) var endpointWorkload = ""
    /// The connection's cached labels, when the handler found them to be the destination's
    /// as it routed (then `destination` is not kept: no names copied in and released again).
    private(set) var knownLabels: LabelCache?

    /// Whether what only the access log prints (authority, user agent, request ID,
    /// x-forwarded-for, client, protocol) was gathered into `line` (it is when the log is on).
    private(set) var described = false

    static func wallNanos() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }

    /// When the request began, for the access log.
    var startTime: Date { Date(timeIntervalSince1970: Double(startWallNanos) / 1e9) }

    /// A new request on this connection: every field set again. `headerBytes` and
    /// `contentType`: what the header policy's pass found (HTTPHeaderPolicy.RequestFacts).
    func start(_ head: HTTPRequestHead, headerBytes: Int, contentType: String?) {
        started = NIODeadline.now()
        startWallNanos = Self.wallNanos()
        isGRPC = contentType?.hasPrefix("application/grpc") ?? false
        method = head.method
        line.method = head.method.rawValue
        line.path = head.uri
        requestBytes = headerBytes + head.uri.utf8.count + head.method.rawValue.utf8.count + 12
        requestID = nil
        trace = nil
        routeName = nil
        responseBytes = 0
        status = 0
        grpcStatus = ""
        route(to: nil)
        // Normally let go of by finish(); a request that ended without being recorded
        // must not lend its description to this one.
        described = false
        line.authority = "-"
        line.userAgent = nil
        line.requestID = nil
        line.forwardedFor = nil
    }

    /// The request is recorded: the strings it holds (request ID, URI, headers' values, the
    /// destination's names) are let go now, while they are in the cache, rather than when the
    /// connection's next request starts (or never, on its last one).
    func finish() {
        requestID = nil
        trace = nil
        grpcStatus = ""
        route(to: nil)
        line.method = ""
        line.path = ""
        line.routeName = nil
        line.authority = "-"
        line.userAgent = nil
        line.requestID = nil
        line.forwardedFor = nil
        line.grpcStatus = ""
        line.responseFlags = "-"
        line.peers = .none
        line.upstream = nil
    }

    /// The access-log line, completed with how the request ended (the rest was filled in
    /// as it went).
    func completeLine(code: Int, flags: String, durationMilliseconds: Double, peers: AccessLogPeers) {
        line.startTime = startTime
        line.responseCode = code
        line.responseFlags = flags
        line.grpcStatus = grpcStatus
        line.bytesReceived = requestBytes
        line.bytesSent = responseBytes
        line.durationMilliseconds = durationMilliseconds
        line.peers = peers
        line.upstream = endpoint
        line.trace = trace?.context
    }

    /// Formats the line into the log where it is (inout: no copy of its strings).
    func writeLine(to log: AccessLog) {
        log.request(&line)
    }

    /// What the access log prints about the request as it goes upstream.
    func describe(_ seen: HTTPHeaderPolicy.RequestFacts, http2: Bool, client: String?) {
        described = true
        line.httpProtocol = http2 ? "HTTP/2" : "HTTP/1.1"
        line.downstreamAddress = client
        line.authority = seen.host ?? "-"
        line.userAgent = seen.userAgent
        line.requestID = seen.requestID
        line.forwardedFor = seen.forwardedFor
    }

    /// Where the request goes (nil: passthrough, or not routed yet).
    func route(to d: Destination?) {
        destination = d
        endpoint = d?.target
        endpointWorkload = d?.workload ?? ""
        knownLabels = nil
    }

    /// To `endpoint`, whose labels (and workload) `labels` already has.
    func route(to endpoint: OriginalDestination, labels: LabelCache) {
        destination = nil
        self.endpoint = endpoint
        endpointWorkload = labels.workload
        knownLabels = labels
    }

    /// The response head came: its status, and its bytes and grpc-status as the header
    /// policy's pass found them (grpc-status is only looked for, and only matters, on gRPC
    /// exchanges: Istio's label is empty for HTTP).
    func response(_ status: HTTPResponseStatus, facts: HTTPHeaderPolicy.ResponseFacts) {
        self.status = Int(status.code)
        responseBytes += facts.bytes + 15
        if let grpc = facts.grpcStatus { grpcStatus = grpc }
    }
}
