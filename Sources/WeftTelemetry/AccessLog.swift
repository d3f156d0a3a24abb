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
    private let fd: Int32
    private let buffer = Mutex<[UInt8]>([])
    private let stopped = Atomic<Bool>(false)
    private let droppedLines = Atomic<Int>(0)
    static let maxBuffered = 8 * 1024 * 1024

    /// `destination`: "stdout" or a file path (appended to, created 0640).
    public init(destination: String, format: Format) throws {
        self.format = format
        self.destination = destination
        if destination == "stdout" {
            fd = dup(STDOUT_FILENO)
        } else {
            fd = open(destination, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o640)
            guard fd >= 0 else {
                throw AccessLogError(message: "cannot open the access log \(destination): \(String(cString: strerror(errno)))")
            }
        }
        let thread = Thread { [self] in self.run() }
        thread.name = "weft-access-log"
        thread.start()
    }

    public var dropped: Int { droppedLines.load(ordering: .relaxed) }

    public func request(_ e: RequestLogEntry) {
        append(format == .json ? Self.json(e) : Self.text(e))
    }

    public func connection(_ e: ConnectionLogEntry) {
        append(format == .json ? Self.json(e) : Self.text(e))
    }

    private func append(_ line: String) {
        let ok = buffer.withLock { b -> Bool in
            guard b.count < Self.maxBuffered else { return false }
            b.append(contentsOf: line.utf8)
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
        Glibc.close(fd)
    }

    /// Writes what is buffered now (the writer thread does it every 100 ms).
    public func flush() {
        let pending = buffer.withLock { b -> [UInt8] in
            let out = b
            b.removeAll(keepingCapacity: true)
            return out
        }
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

    /// Flushes and stops the writer.
    public func close() {
        stopped.store(true, ordering: .relaxed)
        flush()
    }

    // MARK: - formats

    static let iso: Date.ISO8601FormatStyle = .iso8601.year().month().day().time(includingFractionalSeconds: true).timeZone(separator: .omitted)

    static func time(_ d: Date) -> String { d.formatted(iso) }

    static func json(_ e: RequestLogEntry) -> String {
        var o: [(String, Any?)] = [
            ("start_time", time(e.startTime)), ("method", e.method), ("path", e.path), ("protocol", e.httpProtocol),
            ("response_code", e.responseCode), ("response_flags", e.responseFlags), ("grpc_status", e.grpcStatus.isEmpty ? nil : e.grpcStatus),
            ("bytes_received", e.bytesReceived), ("bytes_sent", e.bytesSent), ("duration", Int(e.durationMilliseconds.rounded())),
            ("authority", e.authority), ("user_agent", e.userAgent), ("x_forwarded_for", e.forwardedFor), ("request_id", e.requestID),
            ("upstream_host", e.upstreamHost), ("upstream_cluster", e.labels.service.host), ("route_name", e.routeName),
            ("downstream_remote_address", e.downstreamAddress), ("trace_id", e.traceID),
        ]
        o += peers(e.labels)
        return encode(o)
    }

    static func json(_ e: ConnectionLogEntry) -> String {
        var o: [(String, Any?)] = [
            ("start_time", time(e.startTime)), ("protocol", "tcp"), ("response_flags", "-"),
            ("bytes_received", e.bytesReceived), ("bytes_sent", e.bytesSent), ("duration", Int(e.durationMilliseconds.rounded())),
            ("upstream_host", e.upstreamHost), ("upstream_cluster", e.labels.service.host), ("downstream_remote_address", e.downstreamAddress),
        ]
        o += peers(e.labels)
        return encode(o)
    }

    static func peers(_ l: MeshLabels) -> [(String, Any?)] {
        [("reporter", l.reporter.rawValue), ("source_workload", l.source.workload), ("source_namespace", l.source.namespace),
         ("source_principal", l.source.principal), ("destination_workload", l.destination.workload),
         ("destination_namespace", l.destination.namespace), ("destination_principal", l.destination.principal),
         ("connection_security_policy", l.securityPolicy)]
    }

    /// Keys in the given order; strings escaped per RFC 8259.
    static func encode(_ fields: [(String, Any?)]) -> String {
        var out = "{"
        var first = true
        for (k, v) in fields {
            guard let v else { continue }
            if !first { out += "," }
            first = false
            out += "\"\(k)\":"
            switch v {
            case let i as Int: out += String(i)
            case let s as String: out += quote(s)
            default: out += quote("\(v)")
            }
        }
        return out + "}"
    }

    static func quote(_ s: String) -> String {
        var out = "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where u.value < 0x20: out += String(format: "\\u%04x", u.value)
            default: out.unicodeScalars.append(u)
            }
        }
        return out + "\""
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
