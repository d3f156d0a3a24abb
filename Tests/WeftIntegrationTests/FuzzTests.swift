import Foundation
import XCTest

/// A bounded run of `weft-fuzz` over every target (HTTP/1.1, HTTP/2 both sides, config YAML,
/// DNS, trace context, workload files): no input may crash them. Longer runs: see
/// docs/security.md. Also checks the harness itself: a crash is caught and its input kept.
final class FuzzTests: XCTestCase {
    var fuzzer: String {
        URL(fileURLWithPath: MeshHarness.weftBinary).deletingLastPathComponent().appendingPathComponent("weft-fuzz").path
    }

    /// Runs a command to completion (bounded), output through files (no pipe to fill up).
    func run(_ argv: [String], timeout: TimeInterval) -> MeshHarness.Result {
        let base = NSTemporaryDirectory() + "weft-fuzz-run-\(UUID().uuidString.prefix(8))"
        FileManager.default.createFile(atPath: base + ".out", contents: nil)
        FileManager.default.createFile(atPath: base + ".err", contents: nil)
        defer { for ext in [".out", ".err"] { try? FileManager.default.removeItem(atPath: base + ext) } }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: argv[0])
        p.arguments = Array(argv.dropFirst())
        p.standardOutput = FileHandle(forWritingAtPath: base + ".out")
        p.standardError = FileHandle(forWritingAtPath: base + ".err")
        p.environment = ProcessInfo.processInfo.environment.merging(["SWIFT_BACKTRACE": "enable=no"]) { $1 }
        do { try p.run() } catch { return MeshHarness.Result(status: -1, stdout: "", stderr: "\(error)") }
        let deadline = Date().addingTimeInterval(timeout)
        while p.isRunning && Date() < deadline { usleep(50_000) }
        if p.isRunning { kill(p.processIdentifier, SIGKILL) }
        p.waitUntilExit()
        return MeshHarness.Result(status: p.terminationStatus, stdout: (try? String(contentsOfFile: base + ".out", encoding: .utf8)) ?? "",
                                  stderr: (try? String(contentsOfFile: base + ".err", encoding: .utf8)) ?? "")
    }

    func testNoParserCrashesOnMutatedInput() throws {
        guard FileManager.default.isExecutableFile(atPath: fuzzer) else { throw XCTSkip("no weft-fuzz next to \(MeshHarness.weftBinary): swift build") }
        let out = NSTemporaryDirectory() + "weft-fuzz-\(getpid())"
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: out) }
        // A fixed seed in CI (the same inputs every run: a red run is a bug to fix, not
        // luck); WEFT_FUZZ_SEED and WEFT_FUZZ_SECONDS explore further.
        let env = ProcessInfo.processInfo.environment
        let seconds = env["WEFT_FUZZ_SECONDS"] ?? "6", seed = env["WEFT_FUZZ_SEED"] ?? "1"
        let r = run([fuzzer, "--target", "all", "--seconds", seconds, "--seed", seed, "--out", out], timeout: 600)
        if r.status != 0, let files = try? FileManager.default.contentsOfDirectory(atPath: out) {
            for f in files where f.hasPrefix("fuzz-crash-") {
                let bytes = (try? Data(contentsOf: URL(fileURLWithPath: out + "/" + f))) ?? Data()
                XCTFail("\(f) (\(bytes.count) bytes, base64): \(bytes.base64EncodedString())")
            }
        }
        XCTAssertEqual(r.status, 0, r.output)
        XCTAssertTrue(r.stdout.contains("total:") && r.stdout.contains("no crash"), r.output)
        for target in ["http1", "http2-server", "http2-client", "config", "dns", "trace", "workload-file"] {
            XCTAssertTrue(r.stdout.contains("\(target): "), "\(target) ran: \(r.stdout)")
        }
        print(r.stdout)

        let crash = run([fuzzer, "--target", "crash-self-test", "--seconds", "5", "--out", out], timeout: 60)
        XCTAssertEqual(crash.status, 1, crash.output)
        let kept = try Data(contentsOf: URL(fileURLWithPath: out + "/fuzz-crash-crash-self-test.bin"))
        XCTAssertFalse(kept.isEmpty, "the crashing input is written out")
    }
}
