// The few file operations the daemon makes on paths of its own (marks in its runtime directory).
import Glibc

public enum Files {
    /// Creates `path` empty (or empties it), mode 0644.
    public static func createEmpty(_ path: String) throws(SystemError) {
        closeFD(try sys("open \(path)") { Glibc.open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644) })
    }

    /// The first `limit` bytes of a small file (a /proc value, say).
    public static func read(_ path: String, limit: Int = 4096) throws(SystemError) -> [UInt8] {
        let fd = try sys("open \(path)") { Glibc.open(path, O_RDONLY | O_CLOEXEC) }
        defer { closeFD(fd) }
        var out = [UInt8](repeating: 0, count: limit)
        var got = 0
        while got < limit {
            let n = try sys("read \(path)") { out.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress! + got, limit - got) } }
            if n == 0 { break }
            got += n
        }
        return Array(out[..<got])
    }

    /// The path of the running executable (/proc/self/exe), if it can be read.
    public static func ownExecutable() -> String? {
        var buf = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buf, buf.count - 1)
        guard n > 0 else { return nil }
        return String(decoding: buf[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// Removes `path`; true when it was there.
    @discardableResult
    public static func remove(_ path: String) -> Bool { unlink(path) == 0 }
}
