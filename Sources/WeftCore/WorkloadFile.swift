/// A meshed workload described in a file (`/etc/weft/workloads/NAME.conf`, run by the
/// `weft-run@NAME` unit through `weft run --from FILE`): one `key = value` per line, `#`
/// comments, keys named like `weft run`'s flags; `port` and `label` may repeat.
///
///     command = /usr/bin/python3 -m http.server 8000
///     service = web
///     port = 8000/http
///     label = version=v1
///     user = weft-web
///
/// `command` is split into words as a shell would (single and double quotes, backslash
/// escapes) but never run through a shell: no variables, globs or pipes.
public enum WorkloadFile {
    public static let keys: [String] = ["command", "service", "namespace", "port", "label", "service-account", "user", "name"]
    static let repeatable: Set<String> = ["port", "label"]

    /// The `weft run` arguments the file stands for (the command after `--`).
    public static func arguments(_ text: String, path: String) throws -> [String] {
        var flags: [String] = []
        var command: [String]?
        var seen: Set<String> = []
        for (index, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = raw.trimmingWhitespace()
            if line.isEmpty || line.hasPrefix("#") { continue }
            let at = "\(path):\(index + 1)"
            guard let eq = line.firstIndex(of: "=") else {
                throw WeftError(.invalidArgument, "\(at): expected KEY = VALUE, got '\(line)'")
            }
            let key = String(line[..<eq]).trimmingWhitespace().lowercased()
            let value = String(line[line.index(after: eq)...]).trimmingWhitespace()
            guard keys.contains(key) else {
                throw WeftError(.invalidArgument, "\(at): unknown key '\(key)' (known: \(keys.joined(separator: ", ")))")
            }
            guard !value.isEmpty else { throw WeftError(.invalidArgument, "\(at): '\(key)' has no value") }
            guard repeatable.contains(key) || seen.insert(key).inserted else {
                throw WeftError(.invalidArgument, "\(at): '\(key)' given twice (only port and label repeat)")
            }
            if key == "command" {
                do { command = try words(value) } catch let e as WeftError {
                    throw WeftError(.invalidArgument, "\(at): command: \(e.message)")
                }
                if command?.isEmpty ?? true { throw WeftError(.invalidArgument, "\(at): command is empty") }
            } else {
                flags += ["--\(key)", value]
            }
        }
        guard seen.contains("service") else { throw WeftError(.invalidArgument, "\(path): no 'service = NAME' line (the service this workload serves)") }
        guard let command else { throw WeftError(.invalidArgument, "\(path): no 'command = ...' line (what to run)") }
        return flags + ["--"] + command
    }

    /// Shell-like word splitting without expansion.
    public static func words(_ text: String) throws -> [String] {
        var words: [String] = []
        var current = ""
        var inWord = false
        var quote: Character?
        var escaped = false
        for c in text {
            if escaped {
                current.append(c)
                escaped = false
                continue
            }
            switch (quote, c) {
            case (nil, "\\"), ("\"", "\\"):
                escaped = true
                inWord = true
            case (nil, "'"), (nil, "\""):
                quote = c
                inWord = true
            case (let q?, _) where c == q:
                quote = nil
            case (nil, " "), (nil, "\t"):
                if inWord { words.append(current) }
                current = ""
                inWord = false
            default:
                current.append(c)
                inWord = true
            }
        }
        if escaped { throw WeftError(.invalidArgument, "a trailing backslash escapes nothing") }
        if let quote { throw WeftError(.invalidArgument, "unterminated \(quote) quote") }
        if inWord { words.append(current) }
        return words
    }
}

extension StringProtocol {
    func trimmingWhitespace() -> String {
        String(drop { $0 == " " || $0 == "\t" || $0 == "\r" }.reversed().drop { $0 == " " || $0 == "\t" || $0 == "\r" }.reversed())
    }
}
