import ArgumentParser
import Foundation
import WeftConfig
import WeftCore

/// `weft lint`: checks Istio-style config files offline, as `weft apply` will before
/// accepting them. Errors reject a file; warnings explain why a valid config is risky.
struct LintCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lint",
        abstract: "Check VirtualService / DestinationRule YAML: errors with file:line, warnings with why.",
        discussion: "Exit status: 0 when there are no errors (warnings allowed), 1 otherwise."
    )

    @Option(name: .shortAndLong, help: "A YAML file or a directory of *.yaml / *.yml (repeatable).") var file: [String]

    func run() throws {
        guard !file.isEmpty else { fail(WeftError(.invalidArgument, "weft lint needs -f FILE|DIR")) }
        let fm = FileManager.default
        let report = ConfigLoader.load(paths: file, read: { path in
            guard fm.fileExists(atPath: path) else { throw WeftError(.notFound, "no such file") }
            return try String(contentsOfFile: path, encoding: .utf8)
        }, list: { path in
            var isDir: ObjCBool = false
            guard fm.fileExists(atPath: path, isDirectory: &isDir), isDir.boolValue else { return nil }
            return (try? fm.contentsOfDirectory(atPath: path))?.map { (path as NSString).appendingPathComponent($0) } ?? []
        })
        for d in report.diagnostics { print(d) }
        print("\(report.resources.count) resource(s), \(report.errorCount) error(s), \(report.warningCount) warning(s)")
        if report.errorCount > 0 { throw ExitCode(1) }
    }
}
