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
    public var labels: MeshLabels
    /// The trace ID in hex; when nil, `trace`'s is printed (formatted by the writer).
    public var traceID: String?
    public var trace: TraceContext?

    public init(startTime: Date, method: String, path: String, httpProtocol: String, authority: String, responseCode: Int,
                responseFlags: String, bytesReceived: Int, bytesSent: Int, durationMilliseconds: Double, labels: MeshLabels) {
        self.startTime = startTime
        self.method = method
        self.path = path
        self.httpProtocol = httpProtocol
        self.authority = authority
        self.responseCode = responseCode
        self.responseFlags = responseFlags
        grpcStatus = labels.grpcStatus
        self.bytesReceived = bytesReceived
        self.bytesSent = bytesSent
        self.durationMilliseconds = durationMilliseconds
        self.labels = labels
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
/// default text format, to stdout or a file. The data path only queues the entry (its
/// fields, no formatting); a writer thread formats what is queued and writes it every
/// 100 ms, so a request's proxy thread neither formats nor waits on the disk. If
/// `maxPending` entries are waiting (the disk cannot keep up), new ones are dropped and
/// counted rather than blocking traffic.
public final class AccessLog: Sendable {
    public enum Format: String, Sendable {
        case json, text
    }

    private enum Entry: Sendable {
        case request(RequestLogEntry)
        case connection(ConnectionLogEntry)
    }

    public let format: Format
    public let destination: String
    /// The descriptor written to; replaced by reopen() (log rotation). Held while a batch is
    /// formatted and written, so batches reach the file in the order they were queued.
    private let fd: Mutex<Int32>
    private let queue = Mutex<[Entry]>([])
    private let stopped = Atomic<Bool>(false)
    private let droppedLines = Atomic<Int>(0)
    /// At most this many entries wait for the writer by default (about 10 MiB; at 10,000
    /// requests/s the writer takes ~1,000 every 100 ms).
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
        fd = Mutex(try Self.open(destination))
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

    /// After logrotate moved the file away (SIGHUP to the agent): what is queued goes to
    /// the old file, new lines to a new one at the same path. Stdout is left as it is.
    public func reopen() throws {
        guard destination != "stdout" else { return }
        let fresh = try Self.open(destination)
        fd.withLock { current in
            writeOut(takeQueued(), to: current)
            Glibc.close(current)
            current = fresh
        }
    }

    public var dropped: Int { droppedLines.load(ordering: .relaxed) }

    public func request(_ e: RequestLogEntry) { enqueue(.request(e)) }

    public func connection(_ e: ConnectionLogEntry) { enqueue(.connection(e)) }

    private func enqueue(_ entry: Entry) {
        let ok = queue.withLock { q -> Bool in
            guard q.count < maxPending else { return false }
            q.append(entry)
            return true
        }
        if !ok { droppedLines.add(1, ordering: .relaxed) }
    }

    private func takeQueued() -> [Entry] {
        queue.withLock { q -> [Entry] in
            let out = q
            q.removeAll(keepingCapacity: true)
            return out
        }
    }

    private func run() {
        while true {
            let done = stopped.load(ordering: .relaxed)
            flush()
            if done { break }
            usleep(100_000)
        }
        _ = fd.withLock { Glibc.close($0) }
    }

    /// Formats and writes what is queued now (the writer thread does it every 100 ms).
    public func flush() {
        fd.withLock { fd in writeOut(takeQueued(), to: fd) }
    }

    private func writeOut(_ entries: [Entry], to fd: Int32) {
        guard !entries.isEmpty else { return }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(entries.count * 800)
        for entry in entries {
            switch (entry, format) {
            case (.request(let e), .json): Self.appendJSON(e, to: &bytes)
            case (.request(let e), .text): bytes.append(contentsOf: Self.text(e).utf8)
            case (.connection(let e), .json): Self.appendJSON(e, to: &bytes)
            case (.connection(let e), .text): bytes.append(contentsOf: Self.text(e).utf8)
            }
            bytes.append(0x0a)
        }
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + offset, bytes.count - offset) }
            if n <= 0 {
                if n < 0, errno == EINTR { continue }
                break
            }
            offset += n
        }
    }

    /// Flushes and stops the writer.
    public func close() {
        stopped.store(true, ordering: .relaxed)
        flush()
        if !hasWriter { _ = fd.withLock { Glibc.close($0) } }
    }

    // MARK: - formats

    /// RFC 3339 UTC with milliseconds, e.g. 2026-11-24T17:11:23.890Z (formatted by hand:
    /// this runs once per request; the date and time up to the second are kept for the
    /// requests of the same second).
    static func time(_ d: Date) -> String {
        var t = time_t(d.timeIntervalSince1970.rounded(.down))
        let ms = Int((d.timeIntervalSince1970 - Double(t)) * 1000) % 1000
        let prefix = lastSecond.withLock { cached -> String in
            if cached.second == t { return cached.text }
            var tm = Glibc.tm()
            gmtime_r(&t, &tm)
            let text = "\(pad(Int(tm.tm_year) + 1900, 4))-\(pad(Int(tm.tm_mon) + 1, 2))-\(pad(Int(tm.tm_mday), 2))T\(pad(Int(tm.tm_hour), 2)):\(pad(Int(tm.tm_min), 2)):\(pad(Int(tm.tm_sec), 2))"
            cached = (t, text)
            return text
        }
        return prefix + "." + pad(ms, 3) + "Z"
    }

    private static let lastSecond = Mutex<(second: time_t, text: String)>((-1, ""))

    private static func pad(_ v: Int, _ n: Int) -> String {
        let s = String(v)
        return s.utf8.count >= n ? s : String(repeating: "0", count: n - s.utf8.count) + s
    }

    static func json(_ e: RequestLogEntry) -> String { String(decoding: jsonBytes(e), as: UTF8.self) }
    static func json(_ e: ConnectionLogEntry) -> String { String(decoding: jsonBytes(e), as: UTF8.self) }

    static func jsonBytes(_ e: RequestLogEntry) -> [UInt8] {
        var out: [UInt8] = []
        appendJSON(e, to: &out)
        return out
    }

    static func jsonBytes(_ e: ConnectionLogEntry) -> [UInt8] {
        var out: [UInt8] = []
        appendJSON(e, to: &out)
        return out
    }

    static func appendJSON(_ e: RequestLogEntry, to out: inout [UInt8]) {
        var o = JSONLine(&out)
        o.time("start_time", e.startTime)
        o.string("method", e.method)
        o.string("path", e.path)
        o.string("protocol", e.httpProtocol)
        o.int("response_code", e.responseCode)
        o.string("response_flags", e.responseFlags)
        o.string("grpc_status", e.grpcStatus.isEmpty ? nil : e.grpcStatus)
        o.int("bytes_received", e.bytesReceived)
        o.int("bytes_sent", e.bytesSent)
        o.int("duration", Int(e.durationMilliseconds.rounded()))
        o.string("authority", e.authority)
        o.string("user_agent", e.userAgent)
        o.string("x_forwarded_for", e.forwardedFor)
        o.string("request_id", e.requestID)
        o.string("upstream_host", e.upstreamHost ?? e.upstream?.description)
        o.string("upstream_cluster", e.labels.service.host)
        o.string("route_name", e.routeName)
        o.string("downstream_remote_address", e.downstreamAddress)
        o.string("trace_id", e.traceID ?? e.trace?.traceIDHex)
        o.peers(e.labels)
        o.finish(&out)
    }

    static func appendJSON(_ e: ConnectionLogEntry, to out: inout [UInt8]) {
        var o = JSONLine(&out)
        o.time("start_time", e.startTime)
        o.string("protocol", "tcp")
        o.string("response_flags", "-")
        o.int("bytes_received", e.bytesReceived)
        o.int("bytes_sent", e.bytesSent)
        o.int("duration", Int(e.durationMilliseconds.rounded()))
        o.string("upstream_host", e.upstreamHost)
        o.string("upstream_cluster", e.labels.service.host)
        o.string("downstream_remote_address", e.downstreamAddress)
        o.peers(e.labels)
        o.finish(&out)
    }

    /// Envoy's default format:
    /// `[START] "METHOD PATH PROTOCOL" CODE FLAGS RECEIVED SENT DURATION UPSTREAM-TIME "XFF" "UA" "REQUEST-ID" "AUTHORITY" "UPSTREAM-HOST"`
    static func text(_ e: RequestLogEntry) -> String {
        func q(_ s: String?) -> String { "\"" + safe(s ?? "-") + "\"" }
        return "[\(time(e.startTime))] \"\(e.method) \(safe(e.path)) \(e.httpProtocol)\" \(e.responseCode) \(e.responseFlags) "
            + "\(e.bytesReceived) \(e.bytesSent) \(Int(e.durationMilliseconds.rounded())) - \(q(e.forwardedFor)) \(q(e.userAgent)) "
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
        "[\(time(e.startTime))] \"- - -\" 0 - \(e.bytesReceived) \(e.bytesSent) \(Int(e.durationMilliseconds.rounded())) - \"-\" \"-\" \"-\" \"-\" \"\(e.upstreamHost ?? "-")\""
    }
}

public struct AccessLogError: Error, CustomStringConvertible {
    public let message: String
    public var description: String { message }
}

/// One JSON object written straight into the writer's buffer (the batch of lines being
/// written), keys in the order given; strings escaped per RFC 8259 (only the bytes that
/// must be); nil values left out. Strings are copied in bulk, numbers written digit by digit:
/// this runs once per request.
struct JSONLine {
    private var bytes: [UInt8]
    private var first = true

    /// Takes `out` over (appended to); `finish` hands it back with the closing brace.
    init(_ out: inout [UInt8]) {
        bytes = out
        out = []
        bytes.append(UInt8(ascii: "{"))  // growth is left to append (geometric): reserving here would copy the batch per line
    }

    mutating func finish(_ out: inout [UInt8]) {
        bytes.append(UInt8(ascii: "}"))
        out = bytes
        bytes = []
    }

    private mutating func key(_ k: StaticString) {
        if !first { bytes.append(UInt8(ascii: ",")) }
        first = false
        bytes.append(UInt8(ascii: "\""))
        k.withUTF8Buffer { bytes.append(contentsOf: $0) }
        bytes.append(UInt8(ascii: "\""))
        bytes.append(UInt8(ascii: ":"))
    }

    mutating func int(_ k: StaticString, _ v: Int) {
        key(k)
        appendDigits(v)
    }

    private mutating func appendDigits(_ v: Int) {
        if v < 0 { bytes.append(UInt8(ascii: "-")) }
        var rest = v.magnitude
        let start = bytes.count
        repeat {
            bytes.append(UInt8(ascii: "0") + UInt8(rest % 10))
            rest /= 10
        } while rest > 0
        bytes[start...].reverse()
    }

    /// RFC 3339 UTC with milliseconds (AccessLog.time).
    mutating func time(_ k: StaticString, _ d: Date) {
        string(k, AccessLog.time(d))
    }

    mutating func string(_ k: StaticString, _ v: String?) {
        guard var v else { return }
        key(k)
        bytes.append(UInt8(ascii: "\""))
        v.withUTF8 { utf8 in
            if !utf8.contains(where: { $0 < 0x20 || $0 == 0x22 || $0 == 0x5c }) {
                bytes.append(contentsOf: utf8)
                return
            }
            let hex = Array("0123456789abcdef".utf8)
            for b in utf8 {
                switch b {
                case 0x22: bytes.append(contentsOf: [0x5c, 0x22])
                case 0x5c: bytes.append(contentsOf: [0x5c, 0x5c])
                case 0x0a: bytes.append(contentsOf: [0x5c, UInt8(ascii: "n")])
                case 0x0d: bytes.append(contentsOf: [0x5c, UInt8(ascii: "r")])
                case 0x09: bytes.append(contentsOf: [0x5c, UInt8(ascii: "t")])
                case ..<0x20: bytes.append(contentsOf: [0x5c, UInt8(ascii: "u"), 0x30, 0x30, hex[Int(b >> 4)], hex[Int(b & 0xf)]])
                default: bytes.append(b)
                }
            }
        }
        bytes.append(UInt8(ascii: "\""))
    }

    mutating func peers(_ l: MeshLabels) {
        string("reporter", l.reporter.rawValue)
        string("source_workload", l.source.workload)
        string("source_namespace", l.source.namespace)
        string("source_principal", l.source.principal)
        string("destination_workload", l.destination.workload)
        string("destination_namespace", l.destination.namespace)
        string("destination_principal", l.destination.principal)
        string("connection_security_policy", l.securityPolicy)
    }
}
