// The byte-wise String helpers that keep the Unicode tables out of the device binary
// (Sources/TunnelCore/ByteText.swift): they must give the standard library's answers for ASCII
// text, and compare anything else by its UTF-8 bytes.
import Testing
import TunnelCore

/// "é" as one scalar (NFC) and as "e" plus a combining acute accent (NFD).
private let composed = "caf\u{E9}"
private let decomposed = "cafe\u{301}"

@Suite struct ByteTextTests {
    @Test func equalityIsByteEquality() {
        #expect("HTTP/1.1".bytesEqual("HTTP/1.1"))
        #expect(!"HTTP/1.1".bytesEqual("HTTP/1.0"))
        #expect(!"abc".bytesEqual("abcd"))
        #expect("".bytesEqual(""))
        #expect(composed.bytesEqual(composed))
        // String == says these are equal (canonical equivalence); their bytes differ, and two
        // file names or service names spelt so are two different names.
        #expect(composed == decomposed)
        #expect(!composed.bytesEqual(decomposed))
    }

    @Test func prefixesAndSuffixes() {
        #expect("--region".hasBytePrefix("--"))
        #expect("--region".hasBytePrefix(""))
        #expect(!"-".hasBytePrefix("--"))
        #expect("/etc/".hasByteSuffix("/"))
        #expect(!"/etc".hasByteSuffix("/"))
        #expect("x".hasByteSuffix("x"))
        #expect(!"x".hasByteSuffix("xx"))
        #expect(decomposed.hasBytePrefix("cafe"))
        #expect(!composed.hasBytePrefix("cafe"))
        #expect(decomposed.hasByteSuffix("\u{301}"))
    }

    @Test func searchingAndCutting() {
        #expect("/run/ssh.sock".containsByte(0x2F))
        #expect(!"22".containsByte(0x2F))
        #expect("SSH=22".splitOnce(at: 0x3D)! == ("SSH", "22"))
        #expect("a=b=c".splitOnce(at: 0x3D)! == ("a", "b=c"))
        #expect("=".splitOnce(at: 0x3D)! == ("", ""))
        #expect("SSH".splitOnce(at: 0x3D) == nil)
        #expect("\(composed)=/tmp/\(decomposed)".splitOnce(at: 0x3D).map { Array($0.after.utf8) } == Array("/tmp/\(decomposed)".utf8))
        #expect(",a,,b,".splitBytes(at: 0x2C) == ["a", "b"])
        #expect(",a,,b,".splitBytes(at: 0x2C, omittingEmpty: false) == ["", "a", "", "b", ""])
        #expect("host".splitBytes(at: 0x3A, omittingEmpty: false) == ["host"])
        #expect("--x=\(composed)".droppingBytes(2) == "x=\(composed)")
        #expect("ab".droppingBytes(5) == "")
    }

    @Test func asciiCaseInsensitiveEquality() {
        #expect("Upgrade".equalsIgnoringASCIICase("upGRADE"))
        #expect("Sec-WebSocket-Key".equalsIgnoringASCIICase("sec-websocket-key"))
        #expect(!"upgrade".equalsIgnoringASCIICase("upgrades"))
        // Only letters differ by case: '@' and '`' differ by the same bit.
        #expect(!"@".equalsIgnoringASCIICase("`"))
        #expect(!"[".equalsIgnoringASCIICase("{"))
        // Non-ASCII bytes compare exactly.
        #expect(!"\u{C9}".equalsIgnoringASCIICase("\u{E9}"))
    }

    @Test func lists() {
        #expect(["SSH", "HTTP"].containsBytes("HTTP"))
        #expect(![composed].containsBytes(decomposed))
        #expect(![String]().containsBytes(""))
    }

    @Test func bytewiseSwitchesAndKeys() {
        func mode(_ text: String) -> String {
            switch Bytewise(text) {
            case "src", "source": return "source"
            case "dst", "destination": return "destination"
            default: return "?"
            }
        }
        #expect(mode("src") == "source")
        #expect(mode("destination") == "destination")
        #expect(mode("Source") == "?")
        #expect(mode("") == "?")
        func optional(_ text: String?) -> String {
            switch text.map({ Bytewise($0) }) {
            case nil, "text": return "text"
            case "json": return "json"
            case let other?: return "other " + other.text
            }
        }
        #expect(optional(nil) == "text")
        #expect(optional("json") == "json")
        #expect(optional("xml") == "other xml")
        var ports: [Bytewise: Int] = [:]
        ports[Bytewise("SSH")] = 22
        ports[Bytewise(composed)] = 1
        #expect(ports[Bytewise("SSH")] == 22)
        #expect(ports[Bytewise(composed)] == 1)
        #expect(ports[Bytewise(decomposed)] == nil)
        #expect(Bytewise("a").hashValue == Bytewise(String("a")).hashValue)
        #expect(Bytewise(composed).description == composed)
    }
}
