import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import WeftCore

/// A small etcd v3 client over etcd's JSON gateway (`POST /v3/kv/...` on the client port):
/// get, prefix range, put, and compare-and-put on a key's modification revision — what the
/// control plane needs to keep its store in etcd (`--store etcd://h1:2379,h2:2379`). One
/// request per connection (the store's writes are rare); the endpoints are tried in turn,
/// starting with the last one that answered, and an error names every endpoint and why.
public final class EtcdClient: Sendable {
    public struct Endpoint: Sendable, Equatable, CustomStringConvertible {
        public var host: String
        public var port: Int
        public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
    }

    public struct KeyValue: Sendable, Equatable {
        public var key: String
        public var value: [UInt8]
        public var modRevision: Int64
    }

    public let endpoints: [Endpoint]
    private let group: EventLoopGroup
    private let timeout: TimeAmount
    private let preferred = NIOLockedValueBox(0)

    public init(endpoints: [Endpoint], group: EventLoopGroup, timeout: TimeAmount = .seconds(2)) {
        self.endpoints = endpoints
        self.group = group
        self.timeout = timeout
    }

    /// `etcd://h1:2379,h2:2379` (port default 2379).
    public static func parse(_ url: String) throws -> [Endpoint] {
        guard url.hasPrefix("etcd://") else {
            throw WeftError(.invalidArgument, "--store \(url): expected etcd://HOST[:PORT][,HOST[:PORT]...]")
        }
        let list = url.dropFirst("etcd://".count).split(separator: ",").map(String.init)
        guard !list.isEmpty else { throw WeftError(.invalidArgument, "--store \(url): no etcd endpoint") }
        return try list.map { item in
            var host = item, port = 2379
            if let colon = item.lastIndex(of: ":"), !item.hasSuffix("]") {
                host = String(item[..<colon])
                guard let p = Int(item[item.index(after: colon)...]), (1...65535).contains(p) else {
                    throw WeftError(.invalidArgument, "--store \(url): bad port in \(item)")
                }
                port = p
            }
            host = host.trimmingCharacters(in: CharacterSet(charactersIn: "[]"))
            guard !host.isEmpty else { throw WeftError(.invalidArgument, "--store \(url): empty host") }
            return Endpoint(host: host, port: port)
        }
    }

    // MARK: - operations

    public func get(_ key: String) async throws -> KeyValue? {
        try await range(["key": Self.b64(key)]).first
    }

    /// Every key starting with `prefix`, in key order.
    public func getPrefix(_ prefix: String) async throws -> [KeyValue] {
        try await range(["key": Self.b64(prefix), "range_end": Self.b64(Self.prefixEnd(prefix))])
    }

    public func put(_ key: String, _ value: [UInt8]) async throws {
        _ = try await call("/v3/kv/put", ["key": Self.b64(key), "value": Data(value).base64EncodedString()])
    }

    /// Writes `value` only if `key` was last modified at `expectedModRevision` (0: the key
    /// must not exist). Returns whether it was written.
    public func compareAndPut(_ key: String, _ value: [UInt8], expectedModRevision: Int64) async throws -> Bool {
        let k = Self.b64(key)
        let body: [String: Any] = [
            "compare": [["key": k, "result": "EQUAL", "target": "MOD", "mod_revision": String(expectedModRevision)]],
            "success": [["request_put": ["key": k, "value": Data(value).base64EncodedString()]]],
        ]
        let reply = try await call("/v3/kv/txn", body)
        return (reply["succeeded"] as? Bool) ?? false
    }

    /// Writes every (key, value) at once if `compareKey` was last modified at
    /// `expectedModRevision` (0: absent). Returns the revision of the write (the new
    /// modification revision of each key), or nil when the comparison failed.
    public func transaction(compareKey: String, expectedModRevision: Int64, puts: [(String, [UInt8])]) async throws -> Int64? {
        let body: [String: Any] = [
            "compare": [["key": Self.b64(compareKey), "result": "EQUAL", "target": "MOD", "mod_revision": String(expectedModRevision)]],
            "success": puts.map { ["request_put": ["key": Self.b64($0.0), "value": Data($0.1).base64EncodedString()]] },
        ]
        let reply = try await call("/v3/kv/txn", body)
        guard (reply["succeeded"] as? Bool) == true else { return nil }
        return Int64((reply["header"] as? [String: Any])?["revision"] as? String ?? "0") ?? 0
    }

    private func range(_ body: [String: Any]) async throws -> [KeyValue] {
        let reply = try await call("/v3/kv/range", body)
        let kvs = reply["kvs"] as? [[String: Any]] ?? []
        return kvs.compactMap { kv in
            guard let k = (kv["key"] as? String).flatMap({ Data(base64Encoded: $0) }) else { return nil }
            let v = (kv["value"] as? String).flatMap { Data(base64Encoded: $0) } ?? Data()
            let rev = Int64(kv["mod_revision"] as? String ?? "0") ?? 0
            return KeyValue(key: String(decoding: k, as: UTF8.self), value: Array(v), modRevision: rev)
        }
    }

    static func b64(_ s: String) -> String { Data(s.utf8).base64EncodedString() }

    /// The key just after every key with this prefix (etcd's range_end for a prefix).
    static func prefixEnd(_ prefix: String) -> String {
        var bytes = Array(prefix.utf8)
        while let last = bytes.last {
            if last < 0xff {
                bytes[bytes.count - 1] = last + 1
                return String(decoding: bytes, as: UTF8.self)
            }
            bytes.removeLast()
        }
        return "\0"
    }

    // MARK: - transport

    /// POSTs `body` as JSON to each endpoint in turn until one answers 200.
    func call(_ path: String, _ body: [String: Any]) async throws -> [String: Any] {
        let payload = try JSONSerialization.data(withJSONObject: body)
        let start = preferred.withLockedValue { $0 }
        var failures: [String] = []
        for i in 0..<endpoints.count {
            let index = (start + i) % endpoints.count
            let endpoint = endpoints[index]
            do {
                let (status, data) = try await post(endpoint, path: path, body: payload)
                let object = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] ?? [:]
                guard status == 200 else {
                    let message = object["message"] as? String ?? object["error"] as? String ?? String(decoding: data.prefix(200), as: UTF8.self)
                    throw WeftError(.system, "HTTP \(status): \(message)")
                }
                preferred.withLockedValue { $0 = index }
                return object
            } catch {
                failures.append("\(endpoint): \(error)")
            }
        }
        throw WeftError(.agentUnavailable, "etcd is unreachable (\(failures.joined(separator: "; ")))",
                        hint: "check --store and that the etcd members are up")
    }

    private func post(_ endpoint: Endpoint, path: String, body: Data) async throws -> (Int, Data) {
        let loop = group.next()
        let promise = loop.makePromise(of: (Int, Data).self)
        let timeout = self.timeout
        let channel: Channel
        do {
            channel = try await ClientBootstrap(group: loop)
                .connectTimeout(timeout)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHTTPClientHandlers()
                        try channel.pipeline.syncOperations.addHandler(EtcdResponseCollector(promise: promise))
                    }
                }
                .connect(host: endpoint.host, port: endpoint.port).get()
        } catch {
            promise.fail(error)
            throw error
        }
        let deadline = loop.scheduleTask(in: timeout) {
            promise.fail(WeftError(.system, "no answer within \(timeout.nanoseconds / 1_000_000) ms"))
            channel.close(promise: nil)
        }
        var head = HTTPRequestHead(version: .http1_1, method: .POST, uri: path)
        head.headers.add(name: "host", value: endpoint.description)
        head.headers.add(name: "content-type", value: "application/json")
        head.headers.add(name: "content-length", value: String(body.count))
        head.headers.add(name: "connection", value: "close")
        channel.write(HTTPClientRequestPart.head(head), promise: nil)
        channel.write(HTTPClientRequestPart.body(.byteBuffer(ByteBuffer(bytes: body))), promise: nil)
        channel.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
        defer {
            deadline.cancel()
            channel.close(promise: nil)
        }
        return try await promise.futureResult.get()
    }
}

/// Collects one response (status and whole body; etcd's answers are small).
private final class EtcdResponseCollector: ChannelInboundHandler {
    typealias InboundIn = HTTPClientResponsePart
    private let promise: EventLoopPromise<(Int, Data)>
    private var status = 0
    private var body = Data()

    init(promise: EventLoopPromise<(Int, Data)>) {
        self.promise = promise
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head): status = Int(head.status.code)
        case .body(let buffer):
            body.append(contentsOf: buffer.readableBytesView)
            if body.count > ControlAPI.maxMessageBytes * 2 {
                promise.fail(WeftError(.protocolError, "etcd answer larger than \(ControlAPI.maxMessageBytes * 2) bytes"))
                context.close(promise: nil)
            }
        case .end: promise.succeed((status, body))
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        promise.fail(error)
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        promise.fail(WeftError(.system, "connection closed before the answer ended"))
    }
}

extension EtcdClient {
    /// Deletes `key` only if it was last modified at `expectedModRevision`.
    public func compareAndDelete(_ key: String, expectedModRevision: Int64) async throws -> Bool {
        let k = Self.b64(key)
        let body: [String: Any] = [
            "compare": [["key": k, "result": "EQUAL", "target": "MOD", "mod_revision": String(expectedModRevision)]],
            "success": [["request_delete_range": ["key": k]]],
        ]
        let reply = try await call("/v3/kv/txn", body)
        return (reply["succeeded"] as? Bool) ?? false
    }
}
