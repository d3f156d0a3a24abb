import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2Posix
import Logging
import NIOSSL
import Synchronization

/// Spans of the whole agent on their way to an OTLP/gRPC collector. Finishing a span only
/// appends it to a bounded queue (4,096; beyond it spans are dropped and counted); an
/// exporter task sends batches of up to 512 every second. A collector that is slow, down or
/// refusing never slows or breaks traffic: its batches are dropped and counted.
public final class Tracer: Sendable {
    /// Share of new traces sampled, 0...1 (a caller's sampled flag is always followed).
    public let sampling: Double
    public let collector: String
    /// How the exporter secures its connection to the collector (nil: plaintext).
    public let collectorTLS: CollectorTLS?
    private let queue = Mutex<[SpanRecord]>([])
    private let droppedSpans = Atomic<Int>(0)
    private let exportedSpans = Atomic<Int>(0)
    private let failedExports = Atomic<Int>(0)
    static let maxQueued = 4096
    static let batch = 512

    public init(collector: String, sampling: Double, tls: CollectorTLS? = nil) {
        self.collector = collector
        self.sampling = min(1, max(0, sampling))
        self.collectorTLS = tls
    }

    public var dropped: Int { droppedSpans.load(ordering: .relaxed) }
    public var exported: Int { exportedSpans.load(ordering: .relaxed) }
    public var failed: Int { failedExports.load(ordering: .relaxed) }

    /// Whether a new trace is sampled, at the configured rate (drawn from the ID generator:
    /// `Double.random` would be a getrandom() system call per request).
    public func sampleNewTrace() -> Bool {
        if sampling >= 1 { return true }
        if sampling <= 0 { return false }
        return sampled(Self.idGenerator.withLock { $0.next() })
    }

    /// This hop's span context: the caller's trace continued with a new span (its sampled
    /// and random flags kept), or a new trace sampled at the configured rate.
    public func context(continuing incoming: TraceContext?) -> TraceContext {
        Self.idGenerator.withLock { context(continuing: incoming, using: &$0) }
    }

    /// The same, with the IDs and the sampling draw taken from the caller's own generator (a
    /// connection's: no lock shared by every request of the agent).
    public func context(continuing incoming: TraceContext?, using g: inout SplitMix64) -> TraceContext {
        if let incoming {
            return TraceContext(traceHigh: incoming.traceHigh, traceLow: incoming.traceLow, span: Self.nonZero(&g), sampled: incoming.sampled,
                                random: incoming.random)
        }
        let ids = Self.newIDs(&g)
        return TraceContext(traceHigh: ids.traceHigh, traceLow: ids.traceLow, span: ids.span, sampled: sampled(g.next()), random: true)
    }

    /// Whether a draw samples a new trace at the configured rate.
    private func sampled(_ draw: UInt64) -> Bool {
        if sampling >= 1 { return true }
        if sampling <= 0 { return false }
        return Double(draw >> 11) * 0x1p-53 < sampling
    }

    /// A new trace ID (two words, not both zero) and span ID (not zero), drawn together.
    public static func newIDs() -> (traceHigh: UInt64, traceLow: UInt64, span: UInt64) {
        idGenerator.withLock { newIDs(&$0) }
    }

    private static func newIDs<G: RandomNumberGenerator>(_ g: inout G) -> (traceHigh: UInt64, traceLow: UInt64, span: UInt64) {
        var high = g.next(), low = g.next()
        while high | low == 0 { (high, low) = (g.next(), g.next()) }
        return (high, low, nonZero(&g))
    }

    /// A new span ID (not zero).
    public static func newSpan() -> UInt64 {
        idGenerator.withLock { nonZero(&$0) }
    }

    private static func nonZero<G: RandomNumberGenerator>(_ g: inout G) -> UInt64 {
        var span = g.next()
        while span == 0 { span = g.next() }
        return span
    }

    /// IDs need to be unique and uniformly random, not secret: a SplitMix64 stream seeded
    /// from the kernel's generator, instead of a getrandom() system call per ID (per request).
    private static let idGenerator: Mutex<SplitMix64> = {
        var kernel = SystemRandomNumberGenerator()
        return Mutex(SplitMix64(seed: kernel.next()))
    }()

    public func finish(_ span: SpanRecord) {
        let kept = queue.withLock { q -> Bool in
            guard q.count < Self.maxQueued else { return false }
            q.append(span)
            return true
        }
        if !kept { droppedSpans.add(1, ordering: .relaxed) }
    }

    func take() -> [SpanRecord] {
        queue.withLock { q in
            let n = min(q.count, Self.batch)
            let out = Array(q.prefix(n))
            q.removeFirst(n)
            return out
        }
    }

    /// Runs until cancelled: batches to `collector` (HOST:PORT; gRPC over TLS when
    /// `collectorTLS` is set, else plaintext) every second.
    public func runExporter(logger: Logger) async {
        let (host, port) = Self.split(collector)
        do {
            let security = collectorTLS.map { $0.transportSecurity } ?? .plaintext
            let transport = try HTTP2ClientTransport.Posix(target: Self.target(host: host, port: port), transportSecurity: security,
                                                           config: .defaults { c in
                c.backoff = .init(initial: .milliseconds(200), max: .seconds(5), multiplier: 2, jitter: 0.2)
            })
            try await withGRPCClient(transport: transport) { client in
                var failing = false
                while !Task.isCancelled {
                    try? await Task.sleep(for: .seconds(1))
                    var spans = take()
                    while !spans.isEmpty {
                        let body = OTLPEncoding.exportRequest(spans, scopeVersion: "weft")
                        var options = CallOptions.defaults
                        options.timeout = .seconds(5)
                        options.waitForReady = false
                        do {
                            try await client.unary(request: ClientRequest(message: body), descriptor: Self.export,
                                                   serializer: RawBytes(), deserializer: RawBytes(), options: options) { _ in }
                            exportedSpans.add(spans.count, ordering: .relaxed)
                            if failing { logger.notice("tracing: the collector at \(collector) takes spans again") }
                            failing = false
                        } catch {
                            droppedSpans.add(spans.count, ordering: .relaxed)
                            failedExports.add(1, ordering: .relaxed)
                            if !failing {
                                logger.warning("tracing: cannot export spans to \(collector); dropping them until it answers",
                                               metadata: ["reason": "\(error)"])
                            }
                            failing = true
                        }
                        spans = take()
                    }
                }
            }
        } catch {
            logger.error("tracing: the exporter to \(collector) stopped: \(error)")
        }
    }

    static let export = MethodDescriptor(fullyQualifiedService: "opentelemetry.proto.collector.trace.v1.TraceService", method: "Export")

    /// An IP literal is an address target: a name target would put the IP in TLS's SNI,
    /// which TLS forbids (the collector's certificate is then checked against the IP).
    static func target(host: String, port: Int) -> any ResolvableTarget {
        var v4 = in_addr(), v6 = in6_addr()
        if inet_pton(AF_INET, host, &v4) == 1 { return .ipv4(address: host, port: port) }
        if inet_pton(AF_INET6, host, &v6) == 1 { return .ipv6(address: host, port: port) }
        return .dns(host: host, port: port)
    }

    static func split(_ address: String) -> (String, Int) {
        if address.hasPrefix("["), let close = address.firstIndex(of: "]") {
            return (String(address[address.index(after: address.startIndex)..<close]),
                    Int(address[address.index(after: close)...].dropFirst()) ?? 4317)
        }
        if let colon = address.lastIndex(of: ":"), let port = Int(address[address.index(after: colon)...]) {
            return (String(address[..<colon]), port)
        }
        return (address, 4317)
    }
}

/// TLS to the OTLP collector: the server's certificate is verified (chain and name) against
/// `caFile`'s certificates, or the system's trust store without one; `certFile` + `keyFile`
/// are a client certificate for collectors that require one (mTLS).
public struct CollectorTLS: Sendable, Equatable {
    public var caFile: String?
    public var certFile: String?
    public var keyFile: String?

    public init(caFile: String? = nil, certFile: String? = nil, keyFile: String? = nil) {
        self.caFile = caFile
        self.certFile = certFile
        self.keyFile = keyFile
    }

    /// Checks the files before the agent starts (the exporter would only find out at its
    /// first connection): the CA and certificate are PEM certificates, the key a PEM private
    /// key that only its owner can read, and a certificate comes with its key.
    public func validate() throws -> CollectorTLS {
        if (certFile == nil) != (keyFile == nil) {
            throw CollectorTLSError("--tracing-collector-cert and --tracing-collector-key go together (a client certificate and its key)")
        }
        for (flag, file) in [("--tracing-collector-ca", caFile), ("--tracing-collector-cert", certFile)] {
            guard let file else { continue }
            let certificates: [NIOSSLCertificate]
            do { certificates = try NIOSSLCertificate.fromPEMFile(file) } catch {
                throw CollectorTLSError("\(flag) \(file): not a readable PEM certificate file (\(error))")
            }
            if certificates.isEmpty { throw CollectorTLSError("\(flag) \(file): no certificate in it") }
        }
        if let key = keyFile {
            var st = stat()
            guard stat(key, &st) == 0 else { throw CollectorTLSError("--tracing-collector-key \(key): \(String(cString: strerror(errno)))") }
            if st.st_mode & 0o077 != 0 {
                throw CollectorTLSError("--tracing-collector-key \(key): readable by others (mode \(String(st.st_mode & 0o777, radix: 8))); chmod 600 it")
            }
            do { _ = try NIOSSLPrivateKey(file: key, format: .pem) } catch {
                throw CollectorTLSError("--tracing-collector-key \(key): not a readable PEM private key (\(error))")
            }
        }
        return self
    }

    var transportSecurity: HTTP2ClientTransport.Posix.TransportSecurity {
        let configure: (inout HTTP2ClientTransport.Posix.TransportSecurity.TLS) -> Void = { tls in
            if let ca = caFile { tls.trustRoots = .certificates([.file(path: ca, format: .pem)]) }
            tls.serverCertificateVerification = .fullVerification
        }
        if let cert = certFile, let key = keyFile {
            return .mTLS(certificateChain: [.file(path: cert, format: .pem)], privateKey: .file(path: key, format: .pem), configure: configure)
        }
        return .tls(configure: configure)
    }
}

public struct CollectorTLSError: Error, CustomStringConvertible {
    public let description: String
    init(_ description: String) { self.description = description }
}

/// Messages that are already protobuf bytes.
struct RawBytes: MessageSerializer, MessageDeserializer {
    func serialize<Bytes: GRPCContiguousBytes>(_ message: [UInt8]) throws -> Bytes { Bytes(message) }
    func deserialize<Bytes: GRPCContiguousBytes>(_ serializedMessageBytes: Bytes) throws -> [UInt8] {
        serializedMessageBytes.withUnsafeBytes { Array($0) }
    }
}

/// Steele, Lea and Flood's SplitMix64: fast, passes BigCrush; not for secrets.
public struct SplitMix64: RandomNumberGenerator, Sendable {
    @usableFromInline var state: UInt64
    public init(seed: UInt64) { state = seed }
    /// Inlinable: the data path draws from it in other modules, per request.
    @inlinable public mutating func next() -> UInt64 {
        state &+= 0x9e37_79b9_7f4a_7c15
        var z = state
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        return z ^ (z >> 31)
    }
}
