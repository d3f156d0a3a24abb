/// RFC 9110's syntax for what the config puts on the wire: header names are tokens, header
/// values have no line break or control character (horizontal tab allowed), a request target
/// or authority has no space either. Checked when the config is read, so the data path can
/// write them without looking again.
public enum HTTPFieldSyntax {
    /// tchar: ALPHA / DIGIT / "!#$%&'*+-.^_`|~"
    public static func isToken(_ s: String) -> Bool {
        !s.isEmpty && s.utf8.allSatisfy { c in
            switch c {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"):
                return true
            default:
                return "!#$%&'*+-.^_`|~".utf8.contains(c)
            }
        }
    }

    /// field-value: no CTL but HTAB (so no CR, LF, NUL, DEL); obs-text (bytes ≥ 0x80) allowed.
    public static func isFieldValue(_ s: String) -> Bool {
        s.utf8.allSatisfy { c in c == 0x09 || (c >= 0x20 && c != 0x7f) }
    }

    /// A request target or authority: printable, no space.
    public static func isRequestTarget(_ s: String) -> Bool {
        !s.isEmpty && s.utf8.allSatisfy { c in c > 0x20 && c != 0x7f }
    }

    /// For error messages: control characters shown escaped.
    public static func quoted(_ s: String) -> String {
        var out = "\""
        for scalar in s.unicodeScalars {
            if scalar.value < 0x20 || scalar.value == 0x7f { out += "\\u{\(String(scalar.value, radix: 16))}" } else { out.unicodeScalars.append(scalar) }
        }
        return out + "\""
    }
}
