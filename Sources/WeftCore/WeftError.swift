/// The error users see. A struct around a code so new codes do not break callers; the
/// message says what was wrong and where, the hint what to do.
public struct WeftError: Error, CustomStringConvertible, Sendable, Equatable {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private let name: String
        private init(_ name: String) { self.name = name }
        public var description: String { name }

        public static let invalidArgument = Code("invalid-argument")
        public static let notRoot = Code("not-root")
        public static let agentUnavailable = Code("agent-unavailable")
        public static let netnsNotFound = Code("netns-not-found")
        public static let alreadyExists = Code("already-exists")
        public static let notFound = Code("not-found")
        public static let addressInUse = Code("address-in-use")
        public static let exhausted = Code("exhausted")
        public static let commandNotFound = Code("command-not-found")
        public static let toolMissing = Code("tool-missing")
        public static let system = Code("system")
        public static let protocolError = Code("protocol-error")
        public static let permissionDenied = Code("permission-denied")
    }

    public let code: Code
    public let message: String
    public let hint: String?

    public init(_ code: Code, _ message: String, hint: String? = nil) {
        self.code = code
        self.message = message
        self.hint = hint
    }

    public var description: String {
        hint.map { "\(message)\n  hint: \($0)" } ?? message
    }
}
