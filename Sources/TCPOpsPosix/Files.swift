// The few file operations the daemon makes on paths of its own (marks in its runtime directory).
import Glibc

public enum Files {
    /// Creates `path` empty (or empties it), mode 0644.
    public static func createEmpty(_ path: String) throws(SystemError) {
        let fd = Glibc.open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw SystemError("open \(path)", errno) }
        closeFD(fd)
    }

    /// Removes `path`; true when it was there.
    @discardableResult
    public static func remove(_ path: String) -> Bool { unlink(path) == 0 }
}
