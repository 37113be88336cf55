// What the fuzz targets share: SwiftPM names an executable's entry point `<Target>_main`, so each
// target defines that and hands its input function to libFuzzer's driver (linked in by
// -sanitize=fuzzer).
public typealias FuzzInput = @convention(c) (UnsafePointer<UInt8>?, Int) -> Int32

@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(_ argc: UnsafeMutablePointer<Int32>,
                         _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
                         _ input: FuzzInput) -> Int32

/// Runs libFuzzer with the process's arguments (`-runs=N CORPUS...`) over `input`.
public func runFuzzer(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?, _ input: FuzzInput) -> Int32 {
    var argc = argc
    var argv = argv
    return LLVMFuzzerRunDriver(&argc, &argv, input)
}
