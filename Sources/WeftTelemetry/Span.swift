/// One finished span, as exported over OTLP.
public struct SpanRecord: Sendable {
    public enum Kind: Int, Sendable {
        case server = 2, client = 3
    }

    public enum Attribute: Sendable {
        case string(String)
        case int(Int64)
    }

    public var traceID: [UInt8]
    public var spanID: [UInt8]
    /// Empty for a trace's root.
    public var parentSpanID: [UInt8]
    public var traceState: String?
    public var name: String
    public var kind: Kind
    public var startNanos: UInt64
    public var endNanos: UInt64
    public var attributes: [(String, Attribute)]
    public var isError: Bool
    /// The workload the span is about (its resource's service.name).
    public var service: String

    public init(traceID: [UInt8], spanID: [UInt8], parentSpanID: [UInt8], name: String, kind: Kind, startNanos: UInt64, endNanos: UInt64,
                attributes: [(String, Attribute)], isError: Bool, service: String) {
        self.traceID = traceID
        self.spanID = spanID
        self.parentSpanID = parentSpanID
        self.name = name
        self.kind = kind
        self.startNanos = startNanos
        self.endNanos = endNanos
        self.attributes = attributes
        self.isError = isError
        self.service = service
    }
}

/// OTLP/protobuf encoding of `ExportTraceServiceRequest` (opentelemetry-proto
/// trace/v1 + collector/trace/v1), for the few fields Weft sends. Pure; written by hand so the
/// build needs no protobuf code generation. Field numbers are the proto's.
public enum OTLPEncoding {
    public static func exportRequest(_ spans: [SpanRecord], scopeVersion: String) -> [UInt8] {
        var out = Protobuf()
        // One ResourceSpans per workload (service.name), spans in arrival order.
        var order: [String] = []
        var byService: [String: [SpanRecord]] = [:]
        for s in spans {
            if byService[s.service] == nil { order.append(s.service) }
            byService[s.service, default: []].append(s)
        }
        for service in order {
            var resourceSpans = Protobuf()
            var resource = Protobuf()
            resource.message(1, keyValue("service.name", .string(service)))
            resourceSpans.message(1, resource)
            var scopeSpans = Protobuf()
            var scope = Protobuf()
            scope.string(1, "weft")
            scope.string(2, scopeVersion)
            scopeSpans.message(1, scope)
            for s in byService[service] ?? [] { scopeSpans.message(2, span(s)) }
            resourceSpans.message(2, scopeSpans)
            out.message(1, resourceSpans)
        }
        return out.bytes
    }

    static func span(_ s: SpanRecord) -> Protobuf {
        var p = Protobuf()
        p.bytes(1, s.traceID)
        p.bytes(2, s.spanID)
        if let state = s.traceState, !state.isEmpty { p.string(3, state) }
        if !s.parentSpanID.isEmpty { p.bytes(4, s.parentSpanID) }
        p.string(5, s.name)
        p.varint(6, UInt64(s.kind.rawValue))
        p.fixed64(7, s.startNanos)
        p.fixed64(8, s.endNanos)
        for (k, v) in s.attributes { p.message(9, keyValue(k, v)) }
        var status = Protobuf()
        status.varint(3, s.isError ? 2 : 0)
        p.message(15, status)
        return p
    }

    static func keyValue(_ key: String, _ value: SpanRecord.Attribute) -> Protobuf {
        var kv = Protobuf()
        kv.string(1, key)
        var any = Protobuf()
        switch value {
        case .string(let s): any.string(1, s)
        case .int(let i): any.varint(3, UInt64(bitPattern: i))
        }
        kv.message(2, any)
        return kv
    }
}

/// Protobuf wire format, the parts OTLP needs.
struct Protobuf {
    var bytes: [UInt8] = []

    mutating func tag(_ field: Int, _ wire: UInt8) { varintRaw(UInt64(field) << 3 | UInt64(wire)) }

    mutating func varintRaw(_ v: UInt64) {
        var v = v
        while v >= 0x80 {
            bytes.append(UInt8(v & 0x7f) | 0x80)
            v >>= 7
        }
        bytes.append(UInt8(v))
    }

    mutating func varint(_ field: Int, _ v: UInt64) {
        tag(field, 0)
        varintRaw(v)
    }

    mutating func fixed64(_ field: Int, _ v: UInt64) {
        tag(field, 1)
        for i in 0..<8 { bytes.append(UInt8((v >> (8 * UInt64(i))) & 0xff)) }
    }

    mutating func bytes(_ field: Int, _ b: [UInt8]) {
        tag(field, 2)
        varintRaw(UInt64(b.count))
        bytes.append(contentsOf: b)
    }

    mutating func string(_ field: Int, _ s: String) { bytes(field, Array(s.utf8)) }

    mutating func message(_ field: Int, _ m: Protobuf) { bytes(field, m.bytes) }
}
