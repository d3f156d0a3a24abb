import Foundation
import Glibc
import Synchronization

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
    public var upstreamHost: String?
    public var routeName: String?
    public var downstreamAddress: String?
    public var labels: MeshLabels
    public var traceID: String?

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
/// default text format, to stdout or a file. Lines are formatted on the caller's thread and
/// appended to a buffer that a writer thread flushes every 100 ms, so the data path never
/// waits on the disk; if the buffer passes 8 MiB (the disk cannot keep up), new lines are
/// dropped and counted rather than blocking traffic.
public final class AccessLog: Sendable {
    public enum Format: String, Sendable {
        case json, text
    }

    public let format: Format
    public let destination: String
    /// The descriptor written to; replaced by reopen() (log rotation), so written under a lock.
    private let fd: Mutex<Int32>
    private let buffer = Mutex<[UInt8]>([])
    private let stopped = Atomic<Bool>(false)
    private let droppedLines = Atomic<Int>(0)
    static let maxBuffered = 8 * 1024 * 1024

    /// `destination`: "stdout" or a file path (appended to, created 0640).
    public init(destination: String, format: Format) throws {
        self.format = format
        self.destination = destination
        fd = Mutex(try Self.open(destination))
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

    /// After logrotate moved the file away (SIGHUP to the agent): what is buffered goes to
    /// the old file, new lines to a new one at the same path. Stdout is left as it is.
    public func reopen() throws {
        guard destination != "stdout" else { return }
        flush()
        let fresh = try Self.open(destination)
        let old = fd.withLock { current -> Int32 in
            let old = current
            current = fresh
            return old
        }
        Glibc.close(old)
    }

    public var dropped: Int { droppedLines.load(ordering: .relaxed) }

    public func request(_ e: RequestLogEntry) {
        if format == .json { append(Self.jsonBytes(e)) } else { append(Array(Self.text(e).utf8)) }
    }

    public func connection(_ e: ConnectionLogEntry) {
        if format == .json { append(Self.jsonBytes(e)) } else { append(Array(Self.text(e).utf8)) }
    }

    private func append(_ line: [UInt8]) {
        let ok = buffer.withLock { b -> Bool in
            guard b.count < Self.maxBuffered else { return false }
            b.append(contentsOf: line)
            b.append(0x0a)
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
        fd.withLock { Glibc.close($0) }
    }

    /// Writes what is buffered now (the writer thread does it every 100 ms).
    public func flush() {
        let pending = buffer.withLock { b -> [UInt8] in
            let out = b
            b.removeAll(keepingCapacity: true)
            return out
        }
        guard !pending.isEmpty else { return }
        fd.withLock { fd in
            var offset = 0
            while offset < pending.count {
                let n = pending.withUnsafeBytes { write(fd, $0.baseAddress! + offset, pending.count - offset) }
                if n <= 0 {
                    if n < 0, errno == EINTR { continue }
                    break
                }
                offset += n
            }
        }
    }

    /// Flushes and stops the writer.
    public func close() {
        stopped.store(true, ordering: .relaxed)
        flush()
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
        var o = JSONLine()
        o.string("start_time", time(e.startTime))
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
        o.string("upstream_host", e.upstreamHost)
        o.string("upstream_cluster", e.labels.service.host)
        o.string("route_name", e.routeName)
        o.string("downstream_remote_address", e.downstreamAddress)
        o.string("trace_id", e.traceID)
        o.peers(e.labels)
        return o.finish()
    }

    static func jsonBytes(_ e: ConnectionLogEntry) -> [UInt8] {
        var o = JSONLine()
        o.string("start_time", time(e.startTime))
        o.string("protocol", "tcp")
        o.string("response_flags", "-")
        o.int("bytes_received", e.bytesReceived)
        o.int("bytes_sent", e.bytesSent)
        o.int("duration", Int(e.durationMilliseconds.rounded()))
        o.string("upstream_host", e.upstreamHost)
        o.string("upstream_cluster", e.labels.service.host)
        o.string("downstream_remote_address", e.downstreamAddress)
        o.peers(e.labels)
        return o.finish()
    }

    /// Envoy's default format:
    /// `[START] "METHOD PATH PROTOCOL" CODE FLAGS RECEIVED SENT DURATION UPSTREAM-TIME "XFF" "UA" "REQUEST-ID" "AUTHORITY" "UPSTREAM-HOST"`
    static func text(_ e: RequestLogEntry) -> String {
        func q(_ s: String?) -> String { "\"" + safe(s ?? "-") + "\"" }
        return "[\(time(e.startTime))] \"\(e.method) \(safe(e.path)) \(e.httpProtocol)\" \(e.responseCode) \(e.responseFlags) "
            + "\(e.bytesReceived) \(e.bytesSent) \(Int(e.durationMilliseconds.rounded())) - \(q(e.forwardedFor)) \(q(e.userAgent)) "
            + "\(q(e.requestID)) \(q(e.authority)) \(q(e.upstreamHost))"
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

/// One JSON object written straight into bytes, keys in the order given; strings escaped
/// per RFC 8259 (only the bytes that must be); nil values left out.
struct JSONLine {
    private var bytes: [UInt8] = [UInt8(ascii: "{")]
    private var first = true

    init() {
        bytes.reserveCapacity(768)
    }

    private mutating func key(_ k: StaticString) {
        if !first { bytes.append(UInt8(ascii: ",")) }
        first = false
        bytes.append(UInt8(ascii: "\""))
        k.withUTF8Buffer { bytes.append(contentsOf: $0) }
        bytes.append(contentsOf: [UInt8(ascii: "\""), UInt8(ascii: ":")])
    }

    mutating func int(_ k: StaticString, _ v: Int) {
        key(k)
        bytes.append(contentsOf: String(v).utf8)
    }

    mutating func string(_ k: StaticString, _ v: String?) {
        guard let v else { return }
        key(k)
        bytes.append(UInt8(ascii: "\""))
        let utf8 = v.utf8
        let plain = utf8.withContiguousStorageIfAvailable { buf in !buf.contains { $0 < 0x20 || $0 == 0x22 || $0 == 0x5c } }
            ?? !utf8.contains { $0 < 0x20 || $0 == 0x22 || $0 == 0x5c }
        if plain {
            bytes.append(contentsOf: utf8)
        } else {
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

    func finish() -> [UInt8] { bytes + [UInt8(ascii: "}")] }
}
