import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2Posix
import Logging
import NIOCore
import NIOSSL
import WeftCore
import WeftIdentity
import X509

/// `weft.control.v1.Control` over the ControlPlane actor. Every error reaching an agent
/// is a gRPC status with Weft's message (what and why), never a bare "internal".
struct ControlService: RegistrableRPCService {
    let plane: ControlPlane
    let buckets: RateLimitBuckets
    let logger: Logger

    func registerMethods<Transport: ServerTransport>(with router: inout RPCRouter<Transport>) {
        let plane = self.plane
        let logger = self.logger
        router.registerHandler(forMethod: ControlAPI.bundle, deserializer: JSONCoder<BundleRequest>(),
                               serializer: JSONCoder<BundleReply>()) { request, _ in
            _ = try await ServerRequest(stream: request)
            return StreamingServerResponse(single: ServerResponse(message: try await Self.mapped { try await plane.bundle() }))
        }
        router.registerHandler(forMethod: ControlAPI.join, deserializer: JSONCoder<JoinRequest>(),
                               serializer: JSONCoder<JoinReply>()) { request, context in
            let join = try await ServerRequest(stream: request).message
            let reply = try await Self.mapped {
                let node = try await Self.node(of: context, plane: plane)
                do {
                    return try await plane.join(join, authenticatedNode: node, address: context.remotePeer)
                } catch {
                    logger.notice("join refused", metadata: ["node": "\(join.node)", "peer": "\(context.remotePeer)", "reason": "\(error)"])
                    throw error
                }
            }
            return StreamingServerResponse(single: ServerResponse(message: reply))
        }
        router.registerHandler(forMethod: ControlAPI.register, deserializer: JSONCoder<RegisterRequest>(),
                               serializer: JSONCoder<RegisterReply>()) { request, context in
            let message = try await ServerRequest(stream: request).message
            let reply = try await Self.mapped {
                let node = try await Self.requireNode(context, plane: plane)
                return try await plane.register(message.workloads, route: message.route, node: node)
            }
            return StreamingServerResponse(single: ServerResponse(message: reply))
        }
        router.registerHandler(forMethod: ControlAPI.sign, deserializer: JSONCoder<SignRequest>(),
                               serializer: JSONCoder<SignReply>()) { request, context in
            let message = try await ServerRequest(stream: request).message
            let reply = try await Self.mapped {
                let node = try await Self.requireNode(context, plane: plane)
                do {
                    return try await plane.sign(message, node: node)
                } catch {
                    logger.notice("certificate refused", metadata: ["node": "\(node)", "workload": "\(message.workload)", "reason": "\(error)"])
                    throw error
                }
            }
            return StreamingServerResponse(single: ServerResponse(message: reply))
        }
        let buckets = self.buckets
        router.registerHandler(forMethod: ControlAPI.acquire, deserializer: JSONCoder<AcquireRequest>(),
                               serializer: JSONCoder<AcquireReply>()) { request, context in
            let message = try await ServerRequest(stream: request).message
            let reply = try await Self.mapped {
                _ = try await Self.requireNode(context, plane: plane)
                return AcquireReply(grants: try await buckets.acquire(message.leases))
            }
            return StreamingServerResponse(single: ServerResponse(message: reply))
        }
        router.registerHandler(forMethod: ControlAPI.subscribe, deserializer: JSONCoder<AgentMessage>(),
                               serializer: JSONCoder<ConfigSnapshot>()) { request, context in
            let node: String
            do {
                guard let n = try await Self.mapped({ try await Self.node(of: context, plane: plane) }) else {
                    throw RPCError(code: .unauthenticated, message: "subscribing needs a node certificate (join first)")
                }
                node = n
            } catch let error as RPCError {
                logger.notice("subscription refused", metadata: ["peer": "\(context.remotePeer)", "reason": "\(error.message)"])
                return StreamingServerResponse(error: error)
            }
            return StreamingServerResponse { writer in
                let (id, snapshots) = await plane.subscribe(node: node, address: context.remotePeer)
                await withThrowingTaskGroup(of: Void.self) { group in
                    group.addTask {
                        for try await message in request.messages { await plane.received(message, from: node) }
                    }
                    group.addTask {
                        for await snapshot in snapshots { try await writer.write(snapshot) }
                    }
                    // Either side ending (the agent went away, or the control plane stops)
                    // ends the subscription.
                    _ = try? await group.next()
                    group.cancelAll()
                }
                await plane.unsubscribe(id)
                return [:]
            }
        }
    }

    /// The node the caller's certificate proves (nil: a bootstrap certificate).
    static func node(of context: ServerContext, plane: ControlPlane) async throws -> String? {
        guard let transport = context.transportSpecific as? HTTP2ServerTransport.Posix.Context,
              let chain = transport.peerCertificateChain else { return nil }
        return try await plane.node(of: Array(chain))
    }

    static func requireNode(_ context: ServerContext, plane: ControlPlane) async throws -> String {
        guard let node = try await node(of: context, plane: plane) else {
            throw WeftError(.permissionDenied, "this call needs a node certificate (join first)")
        }
        return node
    }

    /// Runs `body`, turning Weft errors into gRPC statuses with the same message.
    static func mapped<T: Sendable>(_ body: () async throws -> T) async throws -> T {
        do {
            return try await body()
        } catch let error as WeftError {
            let code: RPCError.Code
            switch error.code {
            case .permissionDenied: code = .permissionDenied
            case .invalidArgument: code = .invalidArgument
            case .notFound: code = .notFound
            default: code = .internalError
            }
            throw RPCError(code: code, message: error.description)
        }
    }
}

/// TLS on 15012: the serving certificate is the control plane's own SVID; clients must show
/// a certificate, which is either a node's (verified here against the roots) or an agent's
/// self-signed bootstrap certificate (allowed for Bundle and Join only, where the join token
/// is the credential). Verification is ours, so refusals carry a precise reason in the log.
public enum ControlTLS {
    public static func clientVerifier(roots: [Certificate], logger: Logger)
        -> @Sendable ([NIOSSLCertificate], EventLoopPromise<NIOSSLVerificationResultWithMetadata>) -> Void {
        { certificates, promise in
            do {
                let chain = try certificates.map { try Certificate(derEncoded: try $0.toDERBytes()) }
                guard let leaf = chain.first else { throw WeftError(.permissionDenied, "no client certificate") }
                if ChainVerifier.isSelfSigned(leaf) {
                    promise.succeed(.certificateVerified(VerificationMetadata(nil)))
                    return
                }
                try ChainVerifier.verify(chain, roots: roots)
                promise.succeed(.certificateVerified(VerificationMetadata(NIOSSL.ValidatedCertificateChain(certificates))))
            } catch {
                logger.notice("control connection refused: \(error)")
                promise.succeed(.failed)
            }
        }
    }

    /// For agents: the server must chain to `roots` and be exactly the control plane's
    /// identity (a workload or node certificate from the same CA is not the control plane).
    public static func serverVerifier(roots: [Certificate], expected: SpiffeID, logger: Logger)
        -> @Sendable ([NIOSSLCertificate], EventLoopPromise<NIOSSLVerificationResultWithMetadata>) -> Void {
        { certificates, promise in
            do {
                let chain = try certificates.map { try Certificate(derEncoded: try $0.toDERBytes()) }
                let id = try ChainVerifier.verify(chain, roots: roots)
                guard id == expected else {
                    throw WeftError(.permissionDenied, "the server is \(id), not the control plane (\(expected))")
                }
                promise.succeed(.certificateVerified(VerificationMetadata(NIOSSL.ValidatedCertificateChain(certificates))))
            } catch {
                logger.warning("control plane certificate refused: \(error)")
                promise.succeed(.failed)
            }
        }
    }
}
