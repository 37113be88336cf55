// One place where errno is read: every syscall goes through these helpers (sys, sysNonBlocking,
// sysTransfer),
// which retry EINTR and turn a failure into a SystemError that names the call. (getaddrinfo's
// EAI_SYSTEM in Resolve.swift is the one other reader.)
import Glibc

public struct SystemError: Error, CustomStringConvertible, Equatable {
    public let call: String
    public let errno: Int32

    public init(_ call: String, _ errno: Int32) {
        self.call = call
        self.errno = errno
    }

    public var description: String { "\(call): \(errnoName(errno)) (\(String(cString: strerror(errno))))" }
}

/// The symbolic name of an errno value, for logs ("ECONNRESET").
public func errnoName(_ e: Int32) -> String {
    switch e {
    case EPERM: return "EPERM"
    case ENOENT: return "ENOENT"
    case EINTR: return "EINTR"
    case EBADF: return "EBADF"
    case EAGAIN: return "EAGAIN"
    case ENOMEM: return "ENOMEM"
    case EACCES: return "EACCES"
    case EINVAL: return "EINVAL"
    case ENFILE: return "ENFILE"
    case EMFILE: return "EMFILE"
    case EPIPE: return "EPIPE"
    case EADDRINUSE: return "EADDRINUSE"
    case EADDRNOTAVAIL: return "EADDRNOTAVAIL"
    case ENETUNREACH: return "ENETUNREACH"
    case ENETDOWN: return "ENETDOWN"
    case ECONNABORTED: return "ECONNABORTED"
    case ECONNRESET: return "ECONNRESET"
    case ENOBUFS: return "ENOBUFS"
    case ENOTCONN: return "ENOTCONN"
    case ETIMEDOUT: return "ETIMEDOUT"
    case ECONNREFUSED: return "ECONNREFUSED"
    case EHOSTUNREACH: return "EHOSTUNREACH"
    case EHOSTDOWN: return "EHOSTDOWN"
    case EINPROGRESS: return "EINPROGRESS"
    case ESRCH: return "ESRCH"
    case ECHILD: return "ECHILD"
    case EFBIG: return "EFBIG"
    case EEXIST: return "EEXIST"
    case EISDIR: return "EISDIR"
    case ENOTDIR: return "ENOTDIR"
    case ELOOP: return "ELOOP"
    case ENAMETOOLONG: return "ENAMETOOLONG"
    case ENOSPC: return "ENOSPC"
    case EROFS: return "EROFS"
    case ENOTSOCK: return "ENOTSOCK"
    case EPROTO: return "EPROTO"
    case EOPNOTSUPP: return "EOPNOTSUPP"
    case ENOPROTOOPT: return "ENOPROTOOPT"
    case EAFNOSUPPORT: return "EAFNOSUPPORT"
    case ESHUTDOWN: return "ESHUTDOWN"
    case EIO: return "EIO"
    case EFAULT: return "EFAULT"
    case ENETRESET: return "ENETRESET"
    case EISCONN: return "EISCONN"
    case EALREADY: return "EALREADY"
    case EDESTADDRREQ: return "EDESTADDRREQ"
    default: return "errno \(e)"
    }
}

/// Runs a call returning -1 on failure; retries EINTR; throws SystemError otherwise.
@inline(__always)
@discardableResult
package func sys<T: BinaryInteger>(_ name: String, _ body: () -> T) throws(SystemError) -> T {
    while true {
        let r = body()
        if r != -1 { return r }
        let e = Glibc.errno
        if e == EINTR { continue }
        throw SystemError(name, e)
    }
}

/// Like `sys`, but EAGAIN/EWOULDBLOCK comes back as nil instead of an error.
@inline(__always)
package func sysNonBlocking<T: BinaryInteger>(_ name: String, _ body: () -> T) throws(SystemError) -> T? {
    while true {
        let r = body()
        if r != -1 { return r }
        let e = Glibc.errno
        if e == EINTR { continue }
        if e == EAGAIN || e == EWOULDBLOCK { return nil }
        throw SystemError(name, e)
    }
}

/// One non-blocking transfer (read, recv, send, splice) as an IOResult: retries EINTR; EAGAIN is
/// `.wouldBlock`, another errno `.failed`; 0 is the end of the file when `zeroIsEnd` (a read),
/// else a transfer of nothing (a send).
@inline(__always)
package func sysTransfer(zeroIsEnd: Bool = true, _ body: () -> Int) -> IOResult {
    while true {
        let n = body()
        if n > 0 || (n == 0 && !zeroIsEnd) { return .moved(n) }
        if n == 0 { return .endOfFile }
        let e = Glibc.errno
        if e == EINTR { continue }
        if e == EAGAIN || e == EWOULDBLOCK { return .wouldBlock }
        return .failed(e)
    }
}

/// Closes a descriptor exactly once; close's errors are not actionable (the fd is gone either way).
public func closeFD(_ fd: Int32) {
    if fd >= 0 { _ = Glibc.close(fd) }
}

/// Writes text to stderr with one write(2) (stdio's `stderr` is not concurrency-safe in Swift 6).
public func writeStderr(_ text: String) {
    var bytes = Array(text.utf8)
    _ = bytes.withUnsafeMutableBytes { write(2, $0.baseAddress, $0.count) }
}
