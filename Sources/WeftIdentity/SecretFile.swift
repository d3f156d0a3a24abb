import Foundation
import Glibc
import WeftCore

/// Files holding private keys: created with 0600 (never world-readable, not even for a
/// moment), in directories with 0700, replaced atomically.
public enum SecretFile {
    public static func makeDirectory(_ path: String) throws {
        do {
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
            _ = chmod(path, 0o700)
        } catch {
            throw WeftError(.system, "cannot create \(path): \(error.localizedDescription)")
        }
    }

    public static func write(_ text: String, to path: String, mode: mode_t = 0o600) throws {
        let tmp = path + ".tmp"
        unlink(tmp)
        let fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode)
        guard fd >= 0 else { throw WeftError(.system, "cannot create \(tmp): \(String(cString: strerror(errno)))") }
        let bytes = Array(text.utf8)
        let written = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        let synced = fsync(fd)
        close(fd)
        guard written == bytes.count, synced == 0, rename(tmp, path) == 0 else {
            unlink(tmp)
            throw WeftError(.system, "cannot write \(path): \(String(cString: strerror(errno)))")
        }
    }

    /// Refuses a key file that group or others may read.
    public static func checkPrivate(_ path: String) throws {
        var st = stat()
        guard stat(path, &st) == 0 else { throw WeftError(.notFound, "cannot read \(path): \(String(cString: strerror(errno)))") }
        if st.st_mode & 0o077 != 0 {
            throw WeftError(.permissionDenied, "\(path) is readable by group or others (mode \(String(st.st_mode & 0o777, radix: 8)))",
                            hint: "chmod 600 \(path)")
        }
    }
}
