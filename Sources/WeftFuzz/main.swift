import Foundation
import Glibc
import NIOCore
import NIOEmbedded
import NIOHTTP1
import NIOHTTP2
import WeftConfig
import WeftCore
import WeftProxy
import WeftTelemetry

// `weft-fuzz`: a mutation fuzzer for the parsers that see untrusted bytes — HTTP/1.1 request
// heads from apps (NIO's decoder + the proxy's header policy + the protocol sniffer), HTTP/2
// frames from apps (server side) and from upstreams (client side), mesh config YAML, DNS
// messages, W3C trace context and workload files. Inputs are mutated from valid seeds (bit
// flips, interesting bytes, dictionary tokens, deletions, duplications, splices); each target
// runs in-process. A crash (a Swift trap, SIGSEGV…) writes the input that caused it to
// `fuzz-crash-TARGET.bin` and exits 1. No coverage feedback: see docs/security.md.
//
//   weft-fuzz [--target NAME|all] [--seconds N] [--runs N] [--seed N] [--out DIR]

struct Options {
    var targets: [String] = Targets.names
    var seconds = 10.0
    var runs = Int.max
    var seed: UInt64 = UInt64(UInt32.random(in: 1...UInt32.max))
    var out = "."
    /// Runs one target once on this file (a crash input), without the crash handler: the
    /// Swift runtime's backtrace shows where.
    var replay: String?
}

func parseOptions() -> Options {
    var o = Options()
    var args = CommandLine.arguments.dropFirst()
    func value(_ flag: String) -> String {
        guard let v = args.popFirst() else { fail("\(flag) needs a value") }
        return v
    }
    while let a = args.popFirst() {
        switch a {
        case "--target":
            let t = value(a)
            if t == "all" { o.targets = Targets.names } else if t == "crash-self-test" { o.targets = [t] } else {
                let names = t.split(separator: ",").map(String.init)
                for n in names where !Targets.names.contains(n) { fail("unknown target \(n) (targets: \(Targets.names.joined(separator: ", ")), all)") }
                o.targets = names
            }
        case "--seconds": o.seconds = Double(value(a)) ?? { fail("--seconds: a number") }()
        case "--runs": o.runs = Int(value(a)) ?? { fail("--runs: a number") }()
        case "--seed": o.seed = UInt64(value(a)) ?? { fail("--seed: a number") }()
        case "--out": o.out = value(a)
        case "--replay": o.replay = value(a)
        case "-h", "--help":
            print("weft-fuzz [--target \(Targets.names.joined(separator: "|"))|all] [--seconds N per target] [--runs N] [--seed N] [--out DIR]")
            exit(0)
        default: fail("unknown argument \(a)")
        }
    }
    return o
}

func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("weft-fuzz: \(message)\n".utf8))
    exit(2)
}

/// Unbuffered: a crash (which ends with _exit) must not take the lines before it along.
func say(_ line: String) { FileHandle.standardOutput.write(Data((line + "\n").utf8)) }

// MARK: - crash capture

/// The input being run, kept where a signal handler can write it out.
nonisolated(unsafe) var currentInput = UnsafeMutableBufferPointer<UInt8>.allocate(capacity: 1 << 20)
nonisolated(unsafe) var currentLength = 0
nonisolated(unsafe) var crashPath = UnsafeMutablePointer<CChar>.allocate(capacity: 4096)

func installCrashHandler() {
    for sig in [SIGILL, SIGTRAP, SIGSEGV, SIGBUS, SIGABRT, SIGFPE] {
        var action = sigaction()
        action.__sigaction_handler.sa_handler = { sig in
            let fd = open(crashPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
            if fd >= 0 {
                _ = write(fd, currentInput.baseAddress, currentLength)
                close(fd)
            }
            let msg = "weft-fuzz: CRASH (signal); input written\n"
            _ = msg.withCString { write(2, $0, strlen($0)) }
            _exit(1)
        }
        action.sa_flags = Int32(bitPattern: UInt32(truncatingIfNeeded: SA_RESETHAND))
        sigaction(sig, &action, nil)
    }
}

// MARK: - mutation

typealias SplitMix = SplitMix64

struct Mutator {
    var rng: SplitMix
    let seeds: [[UInt8]]
    let dictionary: [[UInt8]]
    static let interesting: [UInt8] = [0, 1, 0x7f, 0x80, 0xff, 0x0d, 0x0a, 0x20, 0x09, 0x3a, 0x2c, 0x3b, 0x22, 0x2d, 0x30, 0x39, 0x41, 0x7a]

    mutating func next() -> [UInt8] {
        var b = seeds[Int.random(in: 0..<seeds.count, using: &rng)]
        let rounds = 1 + Int.random(in: 0..<8, using: &rng)
        for _ in 0..<rounds { mutate(&b) }
        if b.count > 1 << 19 { b.removeLast(b.count - (1 << 19)) }
        return b
    }

    mutating func mutate(_ b: inout [UInt8]) {
        let pos = { (r: inout SplitMix, n: Int) in n == 0 ? 0 : Int.random(in: 0..<n, using: &r) }
        switch Int.random(in: 0..<9, using: &rng) {
        case 0 where !b.isEmpty:
            let i = pos(&rng, b.count)
            b[i] ^= 1 << UInt8.random(in: 0..<8, using: &rng)
        case 1 where !b.isEmpty:
            b[pos(&rng, b.count)] = Self.interesting.randomElement(using: &rng)!
        case 2:
            b.insert(contentsOf: dictionary.randomElement(using: &rng)!, at: pos(&rng, b.count + 1))
        case 3 where b.count > 1:
            let i = pos(&rng, b.count), n = min(b.count - i, 1 + pos(&rng, 16))
            b.removeSubrange(i..<(i + n))
        case 4 where !b.isEmpty:
            let i = pos(&rng, b.count), n = min(b.count - i, 1 + pos(&rng, 64))
            let copies = 1 + pos(&rng, 8)
            let chunk = Array(b[i..<(i + n)])
            for _ in 0..<copies { b.insert(contentsOf: chunk, at: i) }
        case 5:
            let other = seeds.randomElement(using: &rng)!
            if !other.isEmpty {
                let i = pos(&rng, other.count)
                b = Array(b.prefix(pos(&rng, b.count + 1))) + other[i...]
            }
        case 6 where !b.isEmpty:
            b.removeLast(pos(&rng, b.count))
        case 7:
            b.insert(UInt8.random(in: 0...255, using: &rng), at: pos(&rng, b.count + 1))
        default:
            if b.count >= 2 {
                let i = pos(&rng, b.count - 1)
                b.swapAt(i, i + 1)
            }
        }
    }
}

// MARK: - targets

enum Targets {
    static let names = ["http1", "http2-server", "http2-client", "config", "dns", "trace", "workload-file"]

    static func seeds(_ name: String) -> (seeds: [[UInt8]], dictionary: [[UInt8]]) {
        let b = { (s: String) in Array(s.utf8) }
        switch name {
        case "http1":
            return ([b("GET /a?b=c HTTP/1.1\r\nHost: web\r\nAccept: */*\r\n\r\n"),
                     b("POST /charge HTTP/1.1\r\nHost: payments:3000\r\nContent-Length: 5\r\n\r\nhello"),
                     b("POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
                     b("GET / HTTP/1.1\r\nHost: web\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"),
                     b("GET / HTTP/1.0\r\nConnection: keep-alive\r\nx-request-id: 1\r\ntraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\n")],
                    ["\r\n", ": ", "Content-Length", "Transfer-Encoding", "chunked", "Host", "Connection", "close", "keep-alive",
                     "Upgrade", "HTTP/1.1", "HTTP/1.0", "0\r\n\r\n", "ffffffff", "te", "trailers", "x-forwarded-for", " ", "\t"].map(b))
        case "http2-server", "http2-client":
            // Regression seed: a response `:status: ""` crashed swift-nio-http2's client codec.
            let emptyStatus: [UInt8] = [0, 0, 0x0c, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0x64, 0, 4, 0, 1, 0, 0,
                                        0, 0, 0x0a, 1, 4, 0, 0, 0, 1, 0, 7] + Array(":status".utf8) + [0]
            return ([http2Seed(client: name == "http2-server")] + (name == "http2-client" ? [emptyStatus] : []),
                    [[0, 0, 0, 4, 0, 0, 0, 0, 0], [0, 0, 8, 6, 0, 0, 0, 0, 0], [0, 0, 4, 3, 0, 0, 0, 0, 1], [0, 0, 0, 9, 0, 0, 0, 0, 1],
                     [0, 0, 4, 8, 0, 0, 0, 0, 0, 0x7f, 0xff, 0xff, 0xff], [0x82, 0x86, 0x84], [0x3f, 0xe1, 0x1f], [0xff, 0xff, 0xff, 0x0f]])
        case "config":
            return ([b("""
                apiVersion: networking.istio.io/v1
                kind: VirtualService
                metadata: {name: r, namespace: shop}
                spec:
                  hosts: [payments]
                  http:
                  - match: [{uri: {prefix: /v2}, headers: {x-canary: {exact: "1"}}}]
                    route: [{destination: {host: payments, subset: v2}, weight: 20}, {destination: {host: payments, subset: v1}, weight: 80}]
                    retries: {attempts: 3, perTryTimeout: 1s, retryOn: 5xx}
                    timeout: 2s
                ---
                apiVersion: networking.istio.io/v1
                kind: DestinationRule
                metadata: {name: d}
                spec:
                  host: payments
                  trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x-user}}, outlierDetection: {consecutive5xxErrors: 3}}
                  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
                """),
                     b("""
                apiVersion: security.istio.io/v1
                kind: AuthorizationPolicy
                metadata: {name: a}
                spec:
                  action: DENY
                  rules: [{from: [{source: {principals: ["cluster.local/ns/x/sa/y"], ipBlocks: ["10.0.0.0/8"]}}], to: [{operation: {methods: [POST], paths: ["/admin*"]}}]}]
                ---
                apiVersion: weft.dev/v1alpha1
                kind: MeshConfig
                metadata: {name: mesh}
                spec: {outboundTrafficPolicy: {mode: REGISTRY_ONLY, allowedDestinations: [{cidr: 10.0.0.0/8, protocol: TCP, ports: [5432]}]}}
                ---
                apiVersion: weft.dev/v1alpha1
                kind: RateLimitPolicy
                metadata: {name: rl}
                spec: {host: web, limits: [{name: all, requestsPerUnit: 5, unit: second, key: sourceIP}]}
                """)],
                    ["\n", "---\n", ": ", "- ", "{", "}", "[", "]", "&a ", "*a", "!!binary ", "regex: \"(a+)+\"", "weight: ", "99999999999999999999",
                     "-1", "1e308", "null", "~", "\"", "'", "\t", "  "].map(b))
        case "dns":
            return ([[0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 8] + b("payments") + [4] + b("shop") + [3] + b("svc") + [0, 0, 1, 0, 1],
                     [0xab, 0xcd, 0x01, 0x20, 0, 1, 0, 0, 0, 0, 0, 1, 3] + b("ext") + [4] + b("test") + [0, 0, 0x1c, 0, 1,
                      0, 0, 0x29, 0x10, 0, 0, 0, 0, 0, 0, 0]],
                    [[0xc0, 0x0c], [0xc0, 0x00], [0x3f], [0x40], [0, 0xff], [0xff, 0xff], [0, 0x29]])
        case "trace":
            return ([b("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\ncongo=t61rcWkgMzE,rojo=00f067aa0ba902b7"),
                     b("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-03-extra\na=1")],
                    ["-", "0", "f", "ff", "\n", ",", "=", "@", " ", "00000000000000000000000000000000"].map(b))
        default:
            return ([b("command = /usr/bin/python3 -m http.server 8000\nservice = web\nport = 8000/http\nlabel = version=v1\nuser = weft\n"),
                     b("# comment\nname = \"quoted value\" 'single'\nnamespace = shop\n")],
                    ["\n", " = ", "\"", "'", "\\", "#", "port", "label", "=="].map(b))
        }
    }

    /// A client (or server) preface and a few valid frames, HPACK-encoded by NIO.
    static func http2Seed(client: Bool) -> [UInt8] {
        func frame(_ type: UInt8, _ flags: UInt8, _ stream: UInt32, _ payload: [UInt8]) -> [UInt8] {
            let n = payload.count
            return [UInt8(n >> 16 & 0xff), UInt8(n >> 8 & 0xff), UInt8(n & 0xff), type, flags,
                    UInt8(stream >> 24 & 0x7f), UInt8(stream >> 16 & 0xff), UInt8(stream >> 8 & 0xff), UInt8(stream & 0xff)] + payload
        }
        // Literal header fields without indexing, names and values as raw strings.
        func literal(_ name: String, _ value: String) -> [UInt8] {
            [0x00, UInt8(name.utf8.count)] + Array(name.utf8) + [UInt8(value.utf8.count)] + Array(value.utf8)
        }
        var out: [UInt8] = client ? Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8) : []
        out += frame(4, 0, 0, [0, 3, 0, 0, 0, 100, 0, 4, 0, 1, 0, 0])
        let headers = client
            ? literal(":method", "POST") + literal(":scheme", "http") + literal(":path", "/svc.Echo/Say") + literal(":authority", "echo:50051")
                + literal("content-type", "application/grpc") + literal("te", "trailers")
            : literal(":status", "200") + literal("content-type", "application/grpc")
        out += frame(1, 0x4, 1, headers)
        out += frame(0, 0, 1, [0, 0, 0, 0, 3, 0x0a, 0x01, 0x61])
        out += frame(8, 0, 0, [0, 0, 0x10, 0])
        out += frame(6, 0, 0, [1, 2, 3, 4, 5, 6, 7, 8])
        out += client ? frame(0, 0x1, 1, []) : frame(1, 0x5, 1, literal("grpc-status", "0"))
        out += frame(3, 0, 3, [0, 0, 0, 8])
        out += frame(7, 0, 0, [0, 0, 0, 1, 0, 0, 0, 0])
        return out
    }

    /// Runs one input; a thrown or reported error is a normal outcome, only a crash is not.
    static func run(_ name: String, _ input: [UInt8], split: Int) {
        switch name {
        case "crash-self-test":
            // Proves the crash capture: traps on the first mutated input.
            if currentLength > 0, !seeds("http1").seeds.contains(input) { fatalError("crash self-test") }
        case "http1": http1(input, split: split)
        case "http2-server": http2(input, server: true, split: split)
        case "http2-client": http2(input, server: false, split: split)
        case "config":
            let r = ConfigParser.parse(yaml: String(decoding: input, as: UTF8.self), file: "fuzz.yaml")
            _ = ConfigValidator.validate(r.resources)
        case "dns":
            if let q = try? DNSQuery(parsing: input) {
                _ = q.response(rcode: .noError, addresses: [IPAddress("240.240.0.1")!, IPAddress("fd00::1")!])
            }
            _ = DNSQuery.formatError(for: input)
        case "trace":
            let parts = String(decoding: input, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
            _ = TraceContext.parse(values: Array(parts.prefix(1)))
            _ = TraceContext.combinedTracestate(Array(parts.dropFirst()))
        default:
            _ = try? WorkloadFile.arguments(String(decoding: input, as: UTF8.self), path: "fuzz.conf")
        }
    }

    /// Routes with every kind of match (exact, prefix, regex on uri; headers; method; port)
    /// and a rewrite: each decoded request is routed through them as the proxy does.
    static let routes: RouteTable = {
        let yaml = """
            apiVersion: networking.istio.io/v1
            kind: VirtualService
            metadata: {name: r, namespace: shop}
            spec:
              hosts: [payments]
              http:
              - match: [{uri: {regex: "/v[0-9]+/(charge|refund)/.*"}, method: {exact: POST}, headers: {x-canary: {prefix: "ye"}}}]
                rewrite: {uri: /internal/}
                route: [{destination: {host: payments, subset: v2}, weight: 30}, {destination: {host: payments, subset: v1}, weight: 70}]
              - match: [{uri: {prefix: /api}, port: 3000, headers: {authorization: {regex: "Bearer [A-Za-z0-9._-]+"}}}]
                route: [{destination: {host: payments, subset: v1}}]
              - match: [{uri: {exact: /health}}]
                route: [{destination: {host: payments}}]
            """
        return RouteTable(resources: ConfigParser.parse(yaml: yaml, file: "routes.yaml").resources)
    }()

    /// Collects what the HTTP/1.1 decoder produced and runs the proxy's checks on each head:
    /// the header policy, then routing.
    final class HeadSink: ChannelInboundHandler {
        typealias InboundIn = HTTPServerRequestPart
        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            if case .head(let head) = unwrapInboundIn(data) {
                guard case .forward(let request) = HTTPHeaderPolicy.request(head, client: nil, requestID: { "fuzz" }) else { return }
                var headers: [String: String] = [:]
                for (name, value) in request.headers where headers[name.lowercased()] == nil { headers[name.lowercased()] = value }
                let path = request.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? request.uri
                let facts = RequestFacts(method: request.method.rawValue, path: path, headers: headers, port: 3000)
                _ = Targets.routes.decide(host: "payments.shop.svc.cluster.local", facts: facts, random: 0.5)
                _ = RouteTable.rewritePath(path, rewrite: "/internal/", match: .prefix("/v1"))
            }
        }
        func errorCaught(context: ChannelHandlerContext, error: Error) {}
    }

    static func http1(_ input: [UInt8], split: Int) {
        _ = ProtocolSniff.classify(input.prefix(64))
        let channel = EmbeddedChannel()
        defer { _ = try? channel.finish(acceptAlreadyClosed: true) }
        do {
            try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(HTTPRequestDecoder(leftOverBytesStrategy: .fireError)))
            try channel.pipeline.syncOperations.addHandler(HeadSink())
            try feed(channel, input, split: split)
        } catch {}
    }

    /// The HTTP/2 handler configured as the proxy's (server: facing apps; client: facing
    /// upstreams), streams decoded to HTTP/1 parts as the proxy does.
    static func http2(_ input: [UInt8], server: Bool, split: Int) {
        let channel = EmbeddedChannel()
        defer { _ = try? channel.finish(acceptAlreadyClosed: true) }
        do {
            if server {
                _ = try channel.pipeline.syncOperations.configureHTTP2Pipeline(mode: .server, connectionConfiguration: .init(), streamConfiguration: .init()) { stream in
                    stream.eventLoop.makeCompletedFuture {
                        try stream.pipeline.syncOperations.addHandler(HTTP2FramePayloadToHTTP1ServerCodec())
                    }
                }
            } else {
                let mux = try channel.pipeline.syncOperations.configureHTTP2Pipeline(mode: .client, connectionConfiguration: .init(), streamConfiguration: .init()) { stream in
                    stream.eventLoop.makeSucceededVoidFuture()
                }
                let stream = mux.createStreamChannel { stream in
                    stream.eventLoop.makeCompletedFuture {
                        try UpstreamHTTP2Stream.addDecoding(to: stream.pipeline.syncOperations)  // as the proxy's pool
                    }
                }
                channel.embeddedEventLoop.run()
                if let s = try? stream.wait() {
                    s.writeAndFlush(HTTPClientRequestPart.head(.init(version: .http1_1, method: .POST, uri: "/svc.Echo/Say", headers: ["host": "echo"])), promise: nil)
                }
            }
            try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
            try feed(channel, input, split: split)
        } catch {}
    }

    static func feed(_ channel: EmbeddedChannel, _ input: [UInt8], split: Int) throws {
        var rest = input[...]
        while !rest.isEmpty, channel.isActive {
            let n = min(rest.count, split)
            var buffer = channel.allocator.buffer(capacity: n)
            buffer.writeBytes(rest.prefix(n))
            rest = rest.dropFirst(n)
            do { try channel.writeInbound(buffer) } catch { return }
            while (try? channel.readOutbound(as: IOData.self)) != nil {}
            channel.embeddedEventLoop.run()
        }
    }
}

// MARK: - main

let options = parseOptions()
if let replay = options.replay {
    guard let data = FileManager.default.contents(atPath: replay), options.targets.count == 1 else { fail("--replay FILE needs one --target and a readable FILE") }
    let input = [UInt8](data)
    for split in [input.count, 1, 7] { Targets.run(options.targets[0], input, split: max(split, 1)) }
    say("replayed \(input.count) bytes on \(options.targets[0]): no crash")
    exit(0)
}
installCrashHandler()
var total = 0
for (i, name) in options.targets.enumerated() {
    let (seeds, dictionary) = Targets.seeds(name == "crash-self-test" ? "http1" : name)
    var mutator = Mutator(rng: SplitMix(seed: options.seed &+ UInt64(i)), seeds: seeds, dictionary: dictionary)
    _ = "\(options.out)/fuzz-crash-\(name).bin".withCString { strncpy(crashPath, $0, 4095) }
    let start = Date()
    var runs = 0
    // The seeds themselves first, then mutations, until the time or run budget is spent.
    var queue = seeds
    while runs < options.runs, Date().timeIntervalSince(start) < options.seconds {
        let input = queue.popLast() ?? mutator.next()
        currentLength = min(input.count, currentInput.count)
        _ = currentInput.initialize(from: input.prefix(currentLength))
        let split = 1 + (runs % 7 == 0 ? Int.random(in: 0..<16, using: &mutator.rng) : input.count)
        Targets.run(name, input, split: split)
        runs += 1
    }
    total += runs
    say("\(name): \(runs) executions in \(String(format: "%.1f", Date().timeIntervalSince(start))) s, no crash (seed \(options.seed &+ UInt64(i)))")
}
say("total: \(total) executions, no crash")
