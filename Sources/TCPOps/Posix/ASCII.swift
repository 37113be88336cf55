// Byte-level character classes shared by the text formats tcpopsd reads (TOML, JSON).

@inline(__always)
func isDigit(_ c: UInt8) -> Bool { c >= 0x30 && c <= 0x39 }

/// The value of a hexadecimal digit, or nil.
func hexValue(_ c: UInt8) -> Int? {
    switch c {
    case 0x30...0x39: return Int(c - 0x30)
    case 0x41...0x46: return Int(c - 0x41 + 10)
    case 0x61...0x66: return Int(c - 0x61 + 10)
    default: return nil
    }
}
