// libFuzzer target: the control protocol's request decoder. Any line must decode to a request or
// to an error message, and its answer must render; never a crash. Built by `make fuzz`.
import FuzzSupport
import TCPOps
import TCPOpsConfig
import TCPOpsPosix
import TCPOpsProtocol

@_cdecl("FuzzControl_main")
public func main(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    runFuzzer(argc, argv) { data, size in
        let line = data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? []
        switch ControlRequest.decode(line) {
        case .success(let r):
            _ = ControlAnswer.ok(r.id, [("cmd", .string(r.cmd))])
        case .failure(.message(let m, let id)):
            precondition(!m.isEmpty, "an error says what is wrong")
            _ = ControlAnswer.error(id, m)
        }
        return 0
    }
}
