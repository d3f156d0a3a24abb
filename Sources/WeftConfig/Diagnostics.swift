/// Where something is in a config file.
public struct SourceLocation: Sendable, Equatable, CustomStringConvertible {
    public let file: String
    public let line: Int
    public let column: Int

    public init(file: String, line: Int, column: Int) {
        self.file = file
        self.line = line
        self.column = column
    }

    public var description: String { "\(file):\(line):\(column)" }
}

/// One finding about a config: an error (the config is rejected) or a warning (it is
/// accepted, but probably not what was meant). `why` is the one-line reason it matters.
public struct Diagnostic: Sendable, Equatable, CustomStringConvertible {
    public enum Severity: String, Sendable {
        case error, warning
    }

    public let severity: Severity
    public let location: SourceLocation
    public let message: String
    public let why: String?

    public init(_ severity: Severity, at location: SourceLocation, _ message: String, why: String? = nil) {
        self.severity = severity
        self.location = location
        self.message = message
        self.why = why
    }

    public var description: String {
        "\(location): \(severity.rawValue): \(message)" + (why.map { "\n  why: \($0)" } ?? "")
    }
}
