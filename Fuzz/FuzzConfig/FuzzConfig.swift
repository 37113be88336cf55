// libFuzzer target: the configuration parser. Any bytes must give a Configuration or a ConfigError
// naming at least one problem; never a crash, a hang or a sanitizer report. Built by `make fuzz`.
import FuzzSupport
import TCPOps
import TCPOpsConfig
import TCPOpsPosix
import TCPOpsProtocol

@_cdecl("FuzzConfig_main")
public func main(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    runFuzzer(argc, argv) { data, size in
        let bytes = data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? []
        do {
            let config = try ConfigLoader.parse(bytes: bytes, path: "fuzz.toml")
            precondition(!config.listeners.isEmpty, "a valid configuration has a listener")
        } catch let error as ConfigError {
            precondition(!error.problems.isEmpty, "an error names at least one problem")
        } catch {
            preconditionFailure("the parser throws only ConfigError: \(error)")
        }
        return 0
    }
}
