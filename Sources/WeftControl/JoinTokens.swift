import Crypto
import Foundation
import WeftCore
import WeftIdentity

/// Join tokens: random secrets an operator hands to a new node (`weft control token
/// create`). Only their SHA-256 is stored (`<state>/tokens.json`, 0600), with the expiry; a
/// token can be used by several nodes until it expires (like a kubeadm bootstrap token).
public struct JoinTokens: Sendable {
    public struct Record: Codable, Sendable, Equatable {
        public var sha256: String
        public var created: Date
        public var expires: Date
    }

    public private(set) var records: [Record] = []
    public static let maxLifetime: TimeInterval = 7 * 24 * 3600

    public init(records: [Record] = []) {
        self.records = records
    }

    /// A new token valid for `ttl` seconds (1 s to 7 days). Expired records are dropped.
    public mutating func create(ttl: TimeInterval, now: Date = Date()) throws -> (token: String, expires: Date) {
        guard ttl >= 1, ttl <= Self.maxLifetime else {
            throw WeftError(.invalidArgument, "token lifetime \(Int(ttl)) s refused: must be between 1 s and 7 days")
        }
        var bytes = [UInt8](repeating: 0, count: 24)
        for i in bytes.indices { bytes[i] = UInt8.random(in: .min ... .max) }
        let token = "weft-" + Data(bytes).base64EncodedString()
            .replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_").replacingOccurrences(of: "=", with: "")
        records.removeAll { $0.expires <= now }
        let expires = now.addingTimeInterval(ttl)
        records.append(Record(sha256: Self.hash(token), created: now, expires: expires))
        return (token, expires)
    }

    /// Checks a presented token: unknown and expired ones are refused, each with its reason.
    public func check(_ token: String, now: Date = Date()) throws {
        let digest = Self.hash(token)
        guard let record = records.first(where: { $0.sha256 == digest }) else {
            throw WeftError(.permissionDenied, "unknown join token", hint: "create one with `weft control token create`")
        }
        guard record.expires > now else {
            throw WeftError(.permissionDenied, "join token expired at \(record.expires)", hint: "create a new one with `weft control token create`")
        }
    }

    static func hash(_ token: String) -> String {
        SHA256.hash(data: Data(token.utf8)).map { String(format: "%02x", $0) }.joined()
    }

    public static func load(from file: String) throws -> JoinTokens {
        guard let data = FileManager.default.contents(atPath: file) else { return JoinTokens() }
        do {
            return JoinTokens(records: try JSONDecoder.iso.decode([Record].self, from: data))
        } catch {
            throw WeftError(.system, "\(file) is unreadable (\(error)); move it away to start without its tokens")
        }
    }

    public func save(to file: String) throws {
        let data = try JSONEncoder.iso.encode(records)
        try SecretFile.write(String(decoding: data, as: UTF8.self), to: file)
    }
}

extension JSONDecoder {
    static var iso: JSONDecoder {
        let d = JSONDecoder()
        d.dateDecodingStrategy = .iso8601
        return d
    }
}

extension JSONEncoder {
    static var iso: JSONEncoder {
        let e = JSONEncoder()
        e.dateEncodingStrategy = .iso8601
        e.outputFormatting = [.sortedKeys]
        return e
    }
}
