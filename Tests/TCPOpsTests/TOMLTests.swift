// The TOML reader: values of every type with their lines, the table rules, and errors with lines.
import Testing
@testable import TCPOps
@testable import TCPOpsConfig
@testable import TCPOpsLoop
@testable import TCPOpsPosix
@testable import TCPOpsProtocol

@Suite struct TOMLTests {
    func parse(_ text: String) throws -> TOMLTable { try TOML.parse(text) }

    func error(_ text: String) -> TOMLError? {
        do {
            _ = try TOML.parse(text)
            return nil
        } catch {
            return error
        }
    }

    func string(_ t: TOMLTable, _ key: String) -> String? {
        if case .string(let s)? = t[key]?.value { return s }
        return nil
    }

    func table(_ t: TOMLTable, _ key: String) -> TOMLTable? {
        if case .table(let x)? = t[key]?.value { return x }
        return nil
    }

    @Test func scalarsAndTheirLines() throws {
        let t = try parse("""
        # comment
        a = "x\\ty\\u00e9\\U0001F600"   # trailing comment
        b = 'C:\\path'
        c = -17
        d = 1_000
        e = 0xDEAD_beef
        f = 0o17
        g = 0b101
        h = 3.5e-2
        i = -inf
        j = true
        k = 1979-05-27T07:32:00Z
        l = 1979-05-27 07:32:00
        m = 07:32:00
        "quoted key" = 1
        'lit' = 2
        """)
        #expect(string(t, "a") == "x\ty\u{e9}\u{1F600}")
        #expect(t["a"]?.line == 2)
        #expect(string(t, "b") == "C:\\path")
        if case .integer(let c)? = t["c"]?.value { #expect(c == -17) } else { Issue.record("c") }
        if case .integer(let d)? = t["d"]?.value { #expect(d == 1000) } else { Issue.record("d") }
        if case .integer(let e)? = t["e"]?.value { #expect(e == 0xDEADBEEF) } else { Issue.record("e") }
        if case .integer(let f)? = t["f"]?.value { #expect(f == 15) } else { Issue.record("f") }
        if case .integer(let g)? = t["g"]?.value { #expect(g == 5) } else { Issue.record("g") }
        if case .float(let h)? = t["h"]?.value { #expect(h == 0.035) } else { Issue.record("h") }
        if case .float(let i)? = t["i"]?.value { #expect(i == -.infinity) } else { Issue.record("i") }
        if case .bool(let j)? = t["j"]?.value { #expect(j) } else { Issue.record("j") }
        if case .datetime(let k)? = t["k"]?.value { #expect(k == "1979-05-27T07:32:00Z") } else { Issue.record("k") }
        if case .datetime(let l)? = t["l"]?.value { #expect(l == "1979-05-27 07:32:00") } else { Issue.record("l") }
        if case .datetime? = t["m"]?.value {} else { Issue.record("m") }
        #expect(t["quoted key"]?.line == 15 && t["lit"] != nil)
        #expect(t.keys.first == "a")
    }

    @Test func multilineStringsArraysAndInlineTables() throws {
        let t = try parse("""
        s = \"\"\"
        one \\
            two
        three\"\"\"
        r = '''
        raw \\n'''
        a = [
          1,   # one
          "two",
          [3, 4],
        ]
        k = { idle = 1, count = 2 }
        after = 1
        """)
        #expect(string(t, "s") == "one two\nthree")
        #expect(string(t, "r") == "raw \\n")
        if case .array(let a)? = t["a"]?.value {
            #expect(a.items.count == 3 && a.items[1].line == 9)
        } else {
            Issue.record("a")
        }
        #expect(table(t, "k")?.keys == ["idle", "count"])
        #expect(t["after"]?.line == 13)
    }

    @Test func tablesArraysOfTablesAndDottedKeys() throws {
        let t = try parse("""
        [daemon]
        x.y = 1
        [[listener]]
        name = "a"
        [[listener]]
        name = "b"
        [listener.sub]
        q = 1
        [a.b.c]
        [a]
        z = 1
        """)
        #expect(table(t, "daemon").flatMap { table($0, "x") }?["y"] != nil)
        if case .array(let l)? = t["listener"]?.value {
            #expect(l.items.count == 2 && l.items[1].line == 5)
            if case .table(let second) = l.items[1].value { #expect(table(second, "sub") != nil) }
        } else {
            Issue.record("listener")
        }
        #expect(table(t, "a")?["z"] != nil)
    }

    @Test func errorsCarryTheirLines() {
        let cases: [(String, Int, String)] = [
            ("a = 1\na = 2", 2, "defined twice"),
            ("[t]\n[t]", 2, "defined twice"),
            ("a = 1\n[a]", 2, "defined twice"),
            ("[[x]]\n[x]", 2, "defined twice"),
            ("x = [1]\n[[x]]", 2, "already an array"),
            ("a = { b = 1 }\n[a.c]", 2, "cannot hold a table"),
            ("a = \"open\nb = 1", 1, "not closed"),
            ("a = 01", 1, "not a value"),
            ("a = 1__0", 1, "not a value"),
            ("a = bare", 1, "not a value"),
            ("a = 1 b = 2", 1, "end of the line"),
            ("a = { b = 1, }", 1, "trailing"),
            ("a = [1, 2", 1, "not closed"),
            ("a = \"\\q\"", 1, "unknown escape"),
            ("\n\n= 1", 3, "expected a key"),
            ("a = 1\r\nb = 2\rc = 3", 2, "carriage return"),
            ("a = \"\u{7}\"", 1, "control character"),
            ("[a.b]\nc = 1\n[a]\nb.d = 1", 4, "cannot be extended"),
            ("a = 99999999999999999999", 1, "not a value"),
        ]
        for (text, line, words) in cases {
            let e = error(text)
            #expect(e?.line == line, "\(text.debugDescription): \(e?.message ?? "no error")")
            #expect(e?.message.contains(words) == true, "\(text.debugDescription): \(e?.message ?? "no error")")
        }
    }

    @Test func deepNestingIsAnErrorNotACrash() {
        let deep = "a = " + String(repeating: "[", count: 100_000)
        #expect(error(deep)?.message.contains("nested more than") == true)
        let inline = "a = " + String(repeating: "{ b = ", count: 10_000)
        #expect(error(inline)?.message.contains("nested more than") == true)
    }
}
