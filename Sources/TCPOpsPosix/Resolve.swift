// Host names to addresses (getaddrinfo). It blocks, so it runs only where nothing waits on it: at
// start before the loop, and on reload in a thread of its own.
// CShims too: without it a release (whole-module) build stopped finding SOCK_STREAM here once another
// file of this module used SOCK_SEQPACKET through CShims' <sys/socket.h> (Swift 6.3).
import CShims
import Glibc

public enum Resolve {
    /// Every IPv4 and IPv6 address of `host` for TCP, in getaddrinfo's order (RFC 6724, e.g.
    /// ::1 before 127.0.0.1 for "localhost"), without duplicates; or why there are none. No
    /// AI_ADDRCONFIG: a host with only loopback IPv6 still relays to ::1.
    public static func addresses(_ host: String, port: UInt16) -> Result<[SocketAddress], ResolveError> {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        let r = getaddrinfo(host, String(port), &hints, &list)
        guard r == 0 else {
            let why = r == EAI_SYSTEM ? errnoName(errno) : String(cString: gai_strerror(r))
            return .failure(ResolveError(host: host, reason: why))
        }
        defer { freeaddrinfo(list) }
        var out: [SocketAddress] = []
        var p = list
        while let ai = p {
            if let sa = ai.pointee.ai_addr, ai.pointee.ai_family == AF_INET || ai.pointee.ai_family == AF_INET6 {
                var ss = sockaddr_storage()
                withUnsafeMutableBytes(of: &ss) { dst in
                    dst.copyMemory(from: UnsafeRawBufferPointer(start: sa, count: Int(ai.pointee.ai_addrlen)))
                }
                if let a = withUnsafePointer(to: &ss, { SocketAddress(storage: $0) }), !out.contains(a) { out.append(a) }
            }
            p = ai.pointee.ai_next
        }
        return out.isEmpty ? .failure(ResolveError(host: host, reason: "no IPv4 or IPv6 address")) : .success(out)
    }
}

extension Resolve {
    /// Resolves every name at once, each in a thread of its own, and waits at most `seconds` for
    /// them all: a resolver that hangs (its whole timeout times its attempts: 40 s was seen) must
    /// not hold up `--check-config`, which `systemctl reload` runs. A name that has not answered by
    /// then fails with "no answer within ..." (its thread is left to finish on its own: the caller
    /// is about to exit, or does not wait for it).
    public static func all(_ names: [(host: String, port: UInt16)], within seconds: Double) -> [Result<[SocketAddress], ResolveError>] {
        let results = Locked([Result<[SocketAddress], ResolveError>?](repeating: nil, count: names.count))
        for (i, n) in names.enumerated() {
            let thread = PosixThread(name: "tcpops-resolve")
            let (host, port) = (n.host, n.port)
            do {
                try thread.start {
                    let r = addresses(host, port: port)
                    results.withLock { $0[i] = r }
                }
                thread.detach()
            } catch {
                results.withLock { $0[i] = addresses(host, port: port) }  // no thread to be had: here, unbounded
            }
        }
        let deadline = Clock.monotonicNanoseconds() + UInt64(seconds * 1e9)
        while results.withLock({ $0.contains { $0 == nil } }) && Clock.monotonicNanoseconds() < deadline {
            usleep(5000)
        }
        let text = seconds == seconds.rounded() ? "\(Int(seconds)) s" : "\(seconds) s"
        return results.withLock { r in
            r.enumerated().map { i, x in
                x ?? .failure(ResolveError(host: names[i].host, reason: "no answer within \(text) (the resolver does not answer)"))
            }
        }
    }
}

public struct ResolveError: Error, Sendable, CustomStringConvertible {
    public let host: String
    public let reason: String
    public var description: String { "\"\(host)\" does not resolve: \(reason)" }
}
