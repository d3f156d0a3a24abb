import Glibc
import Foundation
import WeftCore

/// Runs a system tool (iptables-restore, nsenter) and captures its output. The only place
/// that starts helper programs, so "tool missing" is reported one way everywhere.
public enum HostCommand {
    public struct Result: Sendable {
        public let status: Int32
        public let stdout: String
        public let stderr: String
    }

    static let searchPath = ["/usr/sbin", "/sbin", "/usr/bin", "/bin", "/usr/local/sbin", "/usr/local/bin"]

    public static func locate(_ tool: String) -> String? {
        let env = ProcessInfo.processInfo.environment["PATH"]?.split(separator: ":").map(String.init) ?? []
        for dir in env + searchPath {
            let path = dir + "/" + tool
            if FileManager.default.isExecutableFile(atPath: path) { return path }
        }
        return nil
    }

    public static func require(_ tool: String, package: String) throws -> String {
        guard let path = locate(tool) else {
            throw WeftError(.toolMissing, "\(tool) is not installed",
                            hint: "install it with: apt-get install -y \(package)")
        }
        return path
    }

    /// Runs `tool args…`, inside `netns` when given (through nsenter, so the tool itself is
    /// unchanged), feeding `input` on stdin.
    public static func run(_ tool: String, package: String, _ args: [String], netns: NetnsName? = nil,
                           input: String? = nil) throws -> Result {
        let toolPath = try require(tool, package: package)
        let process = Process()
        if let netns {
            process.executableURL = URL(fileURLWithPath: try require("nsenter", package: "util-linux"))
            process.arguments = ["--net=\(netns.path)", "--", toolPath] + args
        } else {
            process.executableURL = URL(fileURLWithPath: toolPath)
            process.arguments = args
        }
        let out = Pipe(), err = Pipe(), inp = Pipe()
        process.standardOutput = out
        process.standardError = err
        process.standardInput = inp
        do { try process.run() } catch {
            throw WeftError(.system, "cannot start \(toolPath): \(error)")
        }
        if let input { inp.fileHandleForWriting.write(Data(input.utf8)) }
        try? inp.fileHandleForWriting.close()
        // Read both pipes before waiting so a chatty tool cannot block on a full pipe.
        let stderrBox = DataBox()
        let group = DispatchGroup()
        group.enter()
        DispatchQueue.global().async {
            stderrBox.data = err.fileHandleForReading.readDataToEndOfFile()
            group.leave()
        }
        let stdoutData = out.fileHandleForReading.readDataToEndOfFile()
        group.wait()
        let stderrData = stderrBox.data
        process.waitUntilExit()
        return Result(status: process.terminationStatus,
                      stdout: String(decoding: stdoutData, as: UTF8.self),
                      stderr: String(decoding: stderrData, as: UTF8.self))
    }
}

/// Written by one reader thread, read after DispatchGroup.wait() (which orders the accesses).
private final class DataBox: @unchecked Sendable {
    var data = Data()
}
