// libFuzzer target: the PROXY protocol header parser (accept_proxy). Any bytes must parse to a
// header within the input and the 536-byte bound, ask for more (only while shorter than that), or be
// refused; a header's addresses must build a header that parses back the same. Built by `make fuzz`.
import FuzzSupport
import TCPOps
import TCPOpsConfig
import TCPOpsPosix
import TCPOpsProtocol

@_cdecl("FuzzProxy_main")
public func main(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    runFuzzer(argc, argv) { data, size in
        let bytes = data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? []
        switch ProxyProtocol.parse(bytes) {
        case .needMore:
            precondition(bytes.count < ProxyProtocol.maxHeader, "asked for more past the bound")
        case .invalid(let why):
            precondition(!why.isEmpty)
        case .header(let h):
            precondition(h.length > 0 && h.length <= bytes.count && h.length <= ProxyProtocol.maxHeader)
            if let s = h.source, let d = h.destination {
                let again = ProxyProtocol.header(h.version, source: s, destination: d, conid: 1)
                guard case .header(let back) = ProxyProtocol.parse(again) else { preconditionFailure("a built header does not parse") }
                precondition(back.source == s && back.destination == d)
            }
        }
        return 0
    }
}
