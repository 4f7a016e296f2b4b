/// String operations that look at UTF-8 bytes only, for the device modules.
///
/// The standard library compares `String`s under Unicode canonical equivalence and cuts and
/// searches them by grapheme cluster (`Character`). In Embedded Swift that is what links the
/// Unicode normalisation and grapheme break tables (`libswiftUnicodeDataTables.a`, about 38 KB
/// on armv7) into the binary: `==` and `!=` on `String`, `switch` over string literals,
/// `hasPrefix`/`hasSuffix`, `split(separator:)`, `firstIndex(of:)`, `contains(_:)` and `count` on
/// a `String`, `[String].contains(_:)`, and `String` as a `Dictionary` key all do.
/// docs/FOOTPRINT.md says how `make footprint-check` keeps the tables out.
///
/// Everything the proxy parses or compares is ASCII protocol text, option names, host names
/// and paths, where the byte-wise answers are the Unicode ones; for anything else (a UTF-8 path,
/// a service name) comparing bytes is what the proxy wants: two spellings of "é" are two
/// different file names. Separators passed here must be ASCII bytes, which never occur inside
/// a multi-byte UTF-8 sequence, so every piece cut at one is valid UTF-8 again.
extension String {
    /// Whether both hold the same UTF-8 bytes (`==` without canonical equivalence).
    public func bytesEqual(_ other: String) -> Bool {
        byteMatch(self, other, atEnd: false, wholeLength: true)
    }

    /// Whether the UTF-8 bytes start with those of `prefix`.
    public func hasBytePrefix(_ prefix: String) -> Bool {
        byteMatch(self, prefix, atEnd: false, wholeLength: false)
    }

    /// Whether the UTF-8 bytes end with those of `suffix`.
    public func hasByteSuffix(_ suffix: String) -> Bool {
        byteMatch(self, suffix, atEnd: true, wholeLength: false)
    }

    /// Whether the ASCII byte `byte` occurs.
    public func containsByte(_ byte: UInt8) -> Bool {
        var text = self
        return text.withUTF8 { bytes in
            for b in bytes where b == byte { return true }
            return false
        }
    }

    /// The text before and after the first ASCII byte `separator`, or nil if there is none.
    public func splitOnce(at separator: UInt8) -> (before: String, after: String)? {
        let bytes = Array(utf8)
        guard let i = bytes.firstIndex(of: separator) else { return nil }
        return (String(decoding: bytes[..<i], as: UTF8.self), String(decoding: bytes[(i + 1)...], as: UTF8.self))
    }

    /// The pieces between the ASCII byte `separator`, like `split(separator:)` on the bytes.
    public func splitBytes(at separator: UInt8, omittingEmpty: Bool = true) -> [String] {
        Array(utf8).split(separator: separator, omittingEmptySubsequences: omittingEmpty)
            .map { String(decoding: $0, as: UTF8.self) }
    }

    /// The text after its first `count` bytes (`count` must end on a character boundary, as
    /// it does after ASCII bytes).
    public func droppingBytes(_ count: Int) -> String {
        String(decoding: Array(utf8).dropFirst(count), as: UTF8.self)
    }

    /// Equality with ASCII letters compared case-insensitively (HTTP header names and tokens).
    public func equalsIgnoringASCIICase(_ other: String) -> Bool {
        var a = self, b = other
        return a.withUTF8 { a in
            b.withUTF8 { b in
                guard a.count == b.count else { return false }
                for i in 0..<a.count where a[i] != b[i] {
                    let lower = a[i] | 0x20
                    guard lower == b[i] | 0x20, lower >= 0x61 && lower <= 0x7A else { return false }
                }
                return true
            }
        }
    }
}

/// Whether the bytes of `part` are those at the start (or the end) of `whole`, or all of it.
/// One loop over contiguous bytes serves `==`, prefixes and suffixes: the generic `starts(with:)`
/// and `elementsEqual` over `String.UTF8View` cost about 4 KB of armv7 code.
private func byteMatch(_ whole: String, _ part: String, atEnd: Bool, wholeLength: Bool) -> Bool {
    var whole = whole, part = part
    return whole.withUTF8 { w in
        part.withUTF8 { p in
            guard wholeLength ? p.count == w.count : p.count <= w.count else { return false }
            let start = atEnd ? w.count - p.count : 0
            for i in 0..<p.count where w[start + i] != p[i] { return false }
            return true
        }
    }
}

extension Array where Element == String {
    /// Whether an element holds the same UTF-8 bytes as `text` (`contains(_:)`, byte-wise).
    public func containsBytes(_ text: String) -> Bool {
        for s in self where s.bytesEqual(text) { return true }
        return false
    }
}

/// A `String` that compares and hashes by its UTF-8 bytes: the subject of a `switch` over
/// string literals (`switch Bytewise(text) { case "src", "source": ... }`) and the key of a
/// `Dictionary`, where a plain `String` would bring in the Unicode tables.
public struct Bytewise: Hashable, ExpressibleByStringLiteral, CustomStringConvertible {
    public let text: String

    public init(_ text: String) { self.text = text }
    public init(stringLiteral text: String) { self.text = text }

    public var description: String { text }

    public static func == (a: Bytewise, b: Bytewise) -> Bool { a.text.bytesEqual(b.text) }

    public func hash(into hasher: inout Hasher) {
        var text = self.text
        text.withUTF8 { hasher.combine(bytes: UnsafeRawBufferPointer($0)) }
    }
}
