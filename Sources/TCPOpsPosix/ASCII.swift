// Byte-level character classes shared by the text formats tcpopsd reads (TOML, JSON).

@inline(__always)
package func isDigit(_ c: UInt8) -> Bool { c >= 0x30 && c <= 0x39 }

/// The value of a hexadecimal digit, or nil.
package func hexValue(_ c: UInt8) -> Int? {
    switch c {
    case 0x30...0x39: return Int(c - 0x30)
    case 0x41...0x46: return Int(c - 0x41 + 10)
    case 0x61...0x66: return Int(c - 0x61 + 10)
    default: return nil
    }
}

/// The byte a one-letter backslash escape stands for in TOML and JSON strings (b t n f r " \\).
package func simpleEscape(_ c: UInt8) -> UInt8? {
    switch c {
    case UInt8(ascii: "b"): return 0x08
    case UInt8(ascii: "t"): return 0x09
    case UInt8(ascii: "n"): return 0x0A
    case UInt8(ascii: "f"): return 0x0C
    case UInt8(ascii: "r"): return 0x0D
    case UInt8(ascii: "\""): return 0x22
    case UInt8(ascii: "\\"): return 0x5C
    default: return nil
    }
}
