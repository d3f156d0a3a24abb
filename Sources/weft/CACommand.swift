import ArgumentParser
import Foundation
import WeftAgent
import WeftControl
import WeftCore

struct CACommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ca", abstract: "The agent's certificate authority: root rotation and reload.",
        subcommands: [CARotate.self, CAReload.self])
}

struct CARotate: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rotate",
        abstract: "Rotate the agent's own root without downtime.",
        discussion: """
            Step 1 (`weft ca rotate`): a new root signs from now on, the old one stays trusted, and \
            every workload gets a new certificate at once; established connections carry on. \
            Step 2 (`weft ca rotate --finish`), once nothing depends on the old root: it is no longer \
            trusted. An operator-supplied CA (--ca-cert) is rotated by replacing its files and \
            running `weft ca reload`.
            """)

    @Flag(help: "Stop trusting the previous roots.") var finish = false
    @OptionGroup var agent: AgentSocketOption

    func run() throws {
        do {
            let reply = try AgentClient(socketPath: agent.path).call(.rotateCA(finish: finish)).certificates
            let roots = reply.map { CARotate.count(roots: $0.bundlePEM) } ?? 0
            print(finish ? "rotation finished: \(roots) root(s) trusted" : "new root in use; \(roots) root(s) trusted until `weft ca rotate --finish`")
            print("\(reply?.workloads.count ?? 0) workload certificate(s) re-issued")
        } catch {
            fail(error)
        }
    }

    static func count(roots pem: String) -> Int {
        pem.components(separatedBy: "-----BEGIN CERTIFICATE-----").count - 1
    }
}

struct CAReload: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "reload", abstract: "Re-read the CA files and re-issue every workload certificate.")

    @OptionGroup var agent: AgentSocketOption

    func run() throws {
        do {
            let reply = try AgentClient(socketPath: agent.path).call(.reloadCA).certificates
            print("CA reloaded: \(reply.map { CARotate.count(roots: $0.bundlePEM) } ?? 0) root(s) trusted, \(reply?.workloads.count ?? 0) workload certificate(s) re-issued")
        } catch {
            fail(error)
        }
    }
}
