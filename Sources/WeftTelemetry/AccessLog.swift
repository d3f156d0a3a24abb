import Foundation
import Glibc
import Synchronization
import WeftCore

/// One HTTP request as the access log records it.
public struct RequestLogEntry: Sendable {
    public var startTime: Date
    public var method: String
    public var path: String
    public var httpProtocol: String
    public var authority: String
    public var userAgent: String?
    public var requestID: String?
    public var forwardedFor: String?
    public var responseCode: Int
    public var responseFlags: String
    public var grpcStatus: String
    public var bytesReceived: Int
    public var bytesSent: Int
    public var durationMilliseconds: Double
    /// The upstream as text; when nil, `upstream` is printed (formatted by the writer).
    public var upstreamHost: String?
    public var upstream: OriginalDestination?
    public var routeName: String?
    public var downstreamAddress: String?
    /// Who talked to whom (rendered once per label set: see AccessLogPeers).
    public var peers: AccessLogPeers
    /// The trace ID in hex; when nil, `trace`'s is printed (formatted by the writer).
    public var traceID: String?
    public var trace: TraceContext?

    public init(startTime: Date, method: String, path: String, httpProtocol: String, authority: String, responseCode: Int,
                responseFlags: String, grpcStatus: String = "", bytesReceived: Int, bytesSent: Int, durationMilliseconds: Double,
                peers: AccessLogPeers) {
        self.startTime = startTime
        self.method = method
        self.path = path
        self.httpProtocol = httpProtocol
        self.authority = authority
        self.responseCode = responseCode
        self.responseFlags = responseFlags
        self.grpcStatus = grpcStatus
        self.bytesReceived = bytesReceived
        self.bytesSent = bytesSent
        self.durationMilliseconds = durationMilliseconds
        self.peers = peers
    }

    /// A line to be filled in as a request goes (a record that keeps one and logs it in
    /// place, without copying its strings into a new entry per request).
    public init() {
        self.init(startTime: Date(timeIntervalSince1970: 0), method: "", path: "", httpProtocol: "HTTP/1.1", authority: "-",
                  responseCode: 0, responseFlags: "-", bytesReceived: 0, bytesSent: 0, durationMilliseconds: 0, peers: .none)
    }

    /// With the peers rendered from `labels` now (callers that log many requests between
    /// the same peers keep an AccessLogPeers instead).
    public init(startTime: Date, method: String, path: String, httpProtocol: String, authority: String, responseCode: Int,
                responseFlags: String, bytesReceived: Int, bytesSent: Int, durationMilliseconds: Double, labels: MeshLabels) {
        self.init(startTime: startTime, method: method, path: path, httpProtocol: httpProtocol, authority: authority,
                  responseCode: responseCode, responseFlags: responseFlags, grpcStatus: labels.grpcStatus, bytesReceived: bytesReceived,
                  bytesSent: bytesSent, durationMilliseconds: durationMilliseconds, peers: AccessLogPeers(labels))
    }
}

/// The fields of an access-log line that depend only on who talks to whom (reporter,
/// source and destination workload, namespace and principal, connection security policy
/// and upstream cluster, and the upstream address when made for one endpoint), rendered as
/// JSON once per label set: a connection's requests to the same destination share one, so
/// each line copies these bytes instead of formatting ten fields, and the data path hands
/// over one reference instead of the labels.
public final class AccessLogPeers: Sendable {
    /// `"upstream_cluster":"…","reporter":"…",…` (no braces).
    let json: [UInt8]
    /// The endpoint they were made for, if one, and its `"upstream_host":"…"` rendered: a
    /// line going to it copies that instead of formatting the address.
    let upstream: OriginalDestination?
    let upstreamJSON: [UInt8]

    /// No peers (a blank entry's, before a request is routed).
    public static let none = AccessLogPeers()

    private init() {
        json = []
        upstream = nil
        upstreamJSON = []
    }

    public init(_ l: MeshLabels, upstream: OriginalDestination? = nil) {
        self.upstream = upstream
        var u = LogLineBuffer(capacity: 64)
        u.address("upstream_host", upstream)
        upstreamJSON = u.bytes
        var b = LogLineBuffer(capacity: 512)
        b.string("upstream_cluster", l.service.host)
        b.string("reporter", l.reporter.rawValue)
        b.string("source_workload", l.source.workload)
        b.string("source_namespace", l.source.namespace)
        b.string("source_principal", l.source.principal)
        b.string("destination_workload", l.destination.workload)
        b.string("destination_namespace", l.destination.namespace)
        b.string("destination_principal", l.destination.principal)
        b.string("connection_security_policy", l.securityPolicy)
        json = b.bytes
    }
}

/// One TCP connection (bytes forwarded as they are) as the access log records it.
public struct ConnectionLogEntry: Sendable {
    public var startTime: Date
    public var bytesReceived: Int
    public var bytesSent: Int
    public var durationMilliseconds: Double
    public var downstreamAddress: String?
    public var upstreamHost: String?
    public var labels: MeshLabels

    public init(startTime: Date, bytesReceived: Int, bytesSent: Int, durationMilliseconds: Double, downstreamAddress: String?,
                upstreamHost: String?, labels: MeshLabels) {
        self.startTime = startTime
        self.bytesReceived = bytesReceived
        self.bytesSent = bytesSent
        self.durationMilliseconds = durationMilliseconds
        self.downstreamAddress = downstreamAddress
        self.upstreamHost = upstreamHost
        self.labels = labels
    }
}

/// The access log: one line per HTTP request or TCP connection, JSON (default) or Envoy's
/// default text format, to stdout or a file. The data path formats each line into a
/// shared buffer (bytes written through a pointer, nothing allocated: cheaper than queueing
/// the entry's ~20 fields for another thread, which also freed their memory across threads);
/// a writer thread takes the buffer and writes it every 100 ms, so a request's thread never
/// waits on the disk. If `maxPending` lines are waiting (the disk cannot keep up), new ones
/// are dropped and counted rather than blocking traffic.
public final class AccessLog: Sendable {
    public enum Format: String, Sendable {
        case json, text
    }

    public let format: Format
    public let destination: String
    /// Lines formatted and not yet written, and how many. The data path formats each line
    /// straight into this buffer under the lock (well under a microsecond, no allocation);
    /// the writer swaps it for an empty one.
    private struct Pending: ~Copyable {
        var buffer = LogLineBuffer()
        var lines = 0
    }

    /// What the writer owns: the descriptor written to (replaced by reopen(), log rotation)
    /// and the buffer it swaps with the pending one (both keep their memory, so neither side
    /// allocates, or faults in fresh pages, per batch). Held while a batch is written, so
    /// batches reach the file in order.
    private struct Writer: ~Copyable {
        var fd: Int32
        var buffer = LogLineBuffer()

        init(fd: Int32) { self.fd = fd }
    }

    private let writer: Mutex<Writer>
    private let pending = Mutex(Pending())
    private let stopped = Atomic<Bool>(false)
    private let droppedLines = Atomic<Int>(0)
    /// At most this many lines wait for the writer by default (about 12 MiB of JSON; at
    /// 10,000 requests/s the writer takes ~1,000 every 100 ms).
    public static let defaultMaxPending = 16 * 1024
    let maxPending: Int
    private let hasWriter: Bool

    /// `destination`: "stdout" or a file path (appended to, created 0640). `writerThread`
    /// false (tests): nothing is written until flush() or close().
    public init(destination: String, format: Format, maxPending: Int = AccessLog.defaultMaxPending, writerThread: Bool = true) throws {
        self.format = format
        self.destination = destination
        self.maxPending = maxPending
        hasWriter = writerThread
        writer = Mutex(Writer(fd: try Self.open(destination)))
        guard writerThread else { return }
        let thread = Thread { [self] in self.run() }
        thread.name = "weft-access-log"
        thread.start()
    }

    private static func open(_ destination: String) throws -> Int32 {
        if destination == "stdout" { return dup(STDOUT_FILENO) }
        let fd = Glibc.open(destination, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o640)
        guard fd >= 0 else {
            throw AccessLogError(message: "cannot open the access log \(destination): \(String(cString: strerror(errno)))")
        }
        return fd
    }

    /// After logrotate moved the file away (SIGHUP to the agent): what is pending goes to
    /// the old file, new lines to a new one at the same path. Stdout is left as it is.
    public func reopen() throws {
        guard destination != "stdout" else { return }
        let fresh = try Self.open(destination)
        writer.withLock { w in
            writePending(&w)
            Glibc.close(w.fd)
            w.fd = fresh
        }
    }

    public var dropped: Int { droppedLines.load(ordering: .relaxed) }

    /// The rendered peers of each label set (and endpoint) lines were written for, shared:
    /// every connection between the same peers copies its fields from one AccessLogPeers, so
    /// those bytes stay in the cache instead of one copy per connection competing for it.
    /// Label sets are bounded (see MeshLabels); past `maxSharedPeers` the table starts over.
    private let sharedPeers = Mutex<[PeersKey: AccessLogPeers]>([:])
    static let maxSharedPeers = 4096

    private struct PeersKey: Hashable {
        let labels: MeshLabels
        let upstream: OriginalDestination?
    }

    /// The shared rendering of `labels` (made on first use).
    public func peers(_ labels: MeshLabels, upstream: OriginalDestination? = nil) -> AccessLogPeers {
        let key = PeersKey(labels: labels, upstream: upstream)
        return sharedPeers.withLock { table in
            if let known = table[key] { return known }
            if table.count >= Self.maxSharedPeers { table.removeAll(keepingCapacity: true) }
            let made = AccessLogPeers(labels, upstream: upstream)
            table[key] = made
            return made
        }
    }

    /// Formats the line into the pending buffer (or drops and counts it when `maxPending`
    /// lines already wait: the disk cannot keep up, and traffic must not wait for it).
    public func request(_ e: RequestLogEntry) {
        var e = e
        request(&e)
    }

    /// The same, from an entry the caller keeps (inout: formatted where it is, without
    /// copying its strings, a retain and a release each, as passing it by value from a
    /// class's stored property would). `e` is not changed.
    public func request(_ e: inout RequestLogEntry) {
        add { buffer, format in
            if format == .json { Self.appendJSON(&e, to: &buffer) } else { buffer.append(Self.text(e)) }
        }
    }

    public func connection(_ e: ConnectionLogEntry) {
        add { buffer, format in
            if format == .json { Self.appendJSON(e, to: &buffer) } else { buffer.append(Self.text(e)) }
        }
    }

    private func add(_ line: (inout LogLineBuffer, Format) -> Void) {
        let format = format
        let ok = pending.withLock { p -> Bool in
            guard p.lines < maxPending else { return false }
            line(&p.buffer, format)
            p.buffer.append(0x0a)
            p.lines += 1
            return true
        }
        if !ok { droppedLines.add(1, ordering: .relaxed) }
    }

    private func run() {
        while true {
            let done = stopped.load(ordering: .relaxed)
            flush()
            if done { break }
            usleep(100_000)
        }
        writer.withLock { _ = Glibc.close($0.fd) }
    }

    /// Writes what is pending now (the writer thread does it every 100 ms).
    public func flush() {
        writer.withLock { writePending(&$0) }
    }

    private func writePending(_ w: inout Writer) {
        pending.withLock { p in
            swap(&p.buffer, &w.buffer)
            p.lines = 0
        }
        let fd = w.fd
        w.buffer.withBytes { bytes in
            var offset = 0
            while offset < bytes.count {
                let n = Glibc.write(fd, bytes.baseAddress! + offset, bytes.count - offset)
                if n <= 0 {
                    if n < 0, errno == EINTR { continue }
                    break
                }
                offset += n
            }
        }
        w.buffer.removeAll()
    }

    /// Flushes and stops the writer.
    public func close() {
        stopped.store(true, ordering: .relaxed)
        flush()
        if !hasWriter { writer.withLock { _ = Glibc.close($0.fd) } }
    }

    // MARK: - formats

    /// A duration as whole milliseconds, rounded to nearest (no call into libm, which a
    /// profile showed on every line); not finite or negative: 0, so a bad clock reading
    /// cannot trap in the conversion to Int.
    static func wholeMilliseconds(_ ms: Double) -> Int {
        guard ms.isFinite, ms > 0 else { return 0 }
        return ms < 1e15 ? Int(ms + 0.5) : 1_000_000_000_000_000
    }

    /// RFC 3339 UTC with milliseconds, e.g. 2026-11-24T17:11:23.890Z.
    static func time(_ d: Date) -> String {
        var b = LogLineBuffer(capacity: 32)
        b.timestamp(d)
        return String(decoding: b.bytes, as: UTF8.self)
    }

    static func json(_ e: RequestLogEntry) -> String {
        var b = LogLineBuffer(capacity: 1024)
        var e = e
        appendJSON(&e, to: &b)
        return String(decoding: b.bytes, as: UTF8.self)
    }

    static func json(_ e: ConnectionLogEntry) -> String {
        var b = LogLineBuffer(capacity: 1024)
        appendJSON(e, to: &b)
        return String(decoding: b.bytes, as: UTF8.self)
    }

    static func appendJSON(_ e: inout RequestLogEntry, to o: inout LogLineBuffer) {
        o.openObject()
        o.time("start_time", e.startTime)
        o.string("method", e.method)
        o.string("path", e.path)
        o.string("protocol", e.httpProtocol)
        o.int("response_code", e.responseCode)
        o.string("response_flags", e.responseFlags)
        o.string("grpc_status", e.grpcStatus.isEmpty ? nil : e.grpcStatus)
        o.int("bytes_received", e.bytesReceived)
        o.int("bytes_sent", e.bytesSent)
        o.int("duration", wholeMilliseconds(e.durationMilliseconds))
        o.string("authority", e.authority)
        o.string("user_agent", e.userAgent)
        o.string("x_forwarded_for", e.forwardedFor)
        o.string("request_id", e.requestID)
        if let host = e.upstreamHost {
            o.string("upstream_host", host)
        } else if let upstream = e.upstream, upstream == e.peers.upstream {
            o.fields(e.peers.upstreamJSON)
        } else {
            o.address("upstream_host", e.upstream)
        }
        o.string("route_name", e.routeName)
        o.string("downstream_remote_address", e.downstreamAddress)
        if let id = e.traceID { o.string("trace_id", id) } else { o.traceID("trace_id", e.trace) }
        o.fields(e.peers.json)
        o.closeObject()
    }

    static func appendJSON(_ e: ConnectionLogEntry, to o: inout LogLineBuffer) {
        o.openObject()
        o.time("start_time", e.startTime)
        o.string("protocol", "tcp")
        o.string("response_flags", "-")
        o.int("bytes_received", e.bytesReceived)
        o.int("bytes_sent", e.bytesSent)
        o.int("duration", wholeMilliseconds(e.durationMilliseconds))
        o.string("upstream_host", e.upstreamHost)
        o.string("downstream_remote_address", e.downstreamAddress)
        o.fields(AccessLogPeers(e.labels).json)
        o.closeObject()
    }

    /// Envoy's default format:
    /// `[START] "METHOD PATH PROTOCOL" CODE FLAGS RECEIVED SENT DURATION UPSTREAM-TIME "XFF" "UA" "REQUEST-ID" "AUTHORITY" "UPSTREAM-HOST"`
    static func text(_ e: RequestLogEntry) -> String {
        func q(_ s: String?) -> String { "\"" + safe(s ?? "-") + "\"" }
        return "[\(time(e.startTime))] \"\(e.method) \(safe(e.path)) \(e.httpProtocol)\" \(e.responseCode) \(e.responseFlags) "
            + "\(e.bytesReceived) \(e.bytesSent) \(wholeMilliseconds(e.durationMilliseconds)) - \(q(e.forwardedFor)) \(q(e.userAgent)) "
            + "\(q(e.requestID)) \(q(e.authority)) \(q(e.upstreamHost ?? e.upstream?.description))"
    }

    /// One line stays one line: quotes and control characters percent-encoded.
    static func safe(_ s: String) -> String {
        var out = ""
        for u in s.unicodeScalars {
            if u == "\"" || u.value < 0x20 || u.value == 0x7f { out += String(format: "%%%02X", u.value) } else { out.unicodeScalars.append(u) }
        }
        return out
    }

    static func text(_ e: ConnectionLogEntry) -> String {
        "[\(time(e.startTime))] \"- - -\" 0 - \(e.bytesReceived) \(e.bytesSent) \(wholeMilliseconds(e.durationMilliseconds)) - \"-\" \"-\" \"-\" \"-\" \"\(e.upstreamHost ?? "-")\""
    }
}

public struct AccessLogError: Error, CustomStringConvertible {
    public let message: String
    public var description: String { message }
}
