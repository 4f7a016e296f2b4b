/// An IPv4 or IPv6 address as its network-order bytes, with a byte-level text parser, so that
/// the sans-I/O resolver pieces (hosts file, resolv.conf, DNS answers) need no libc.
public struct IPAddress: Equatable, Sendable, CustomStringConvertible {
    public enum Family: Equatable, Sendable { case v4, v6 }

    /// 4 bytes (IPv4) or 16 bytes (IPv6), most significant first.
    public let bytes: [UInt8]

    public var family: Family { bytes.count == 4 ? .v4 : .v6 }

    /// From 4 or 16 bytes in network order; nil for any other count.
    public init?(bytes: [UInt8]) {
        guard bytes.count == 4 || bytes.count == 16 else { return nil }
        self.bytes = bytes
    }

    /// Parses dotted-quad IPv4 or RFC 4291 IPv6 text (with `::` and an embedded IPv4 tail);
    /// nil for anything else, including zone suffixes such as `%eth0`.
    public init?(_ text: String) {
        guard let parsed = IPAddress(text: Array(text.utf8)) else { return nil }
        self = parsed
    }

    public init?<Text: Collection>(text: Text) where Text.Element == UInt8 {
        let t = Array(text)
        if let v4 = IPAddress.parseV4(t[...]) {
            bytes = v4
        } else if let v6 = IPAddress.parseV6(t) {
            bytes = v6
        } else {
            return nil
        }
    }

    /// IPv4 dotted quad: four decimal parts of 0...255. Leading zeros are refused, as glibc's
    /// inet_pton refuses them, because other parsers read them as octal.
    static func parseV4(_ t: ArraySlice<UInt8>) -> [UInt8]? {
        guard t.count >= 7, t.count <= 15 else { return nil }
        var out: [UInt8] = []
        var value = 0
        var digits = 0
        for c in t {
            if c >= 0x30 && c <= 0x39 {
                if digits == 1 && value == 0 { return nil }
                value = value * 10 + Int(c - 0x30)
                digits += 1
                if value > 255 { return nil }
            } else if c == 0x2E {
                guard digits > 0, out.count < 3 else { return nil }
                out.append(UInt8(value))
                value = 0
                digits = 0
            } else {
                return nil
            }
        }
        guard digits > 0, out.count == 3 else { return nil }
        out.append(UInt8(value))
        return out
    }

    /// IPv6 text: up to eight groups of 1-4 hex digits separated by `:`, at most one `::`
    /// standing for one or more zero groups, optionally ending in an IPv4 dotted quad that
    /// counts as two groups.
    static func parseV6(_ t: [UInt8]) -> [UInt8]? {
        // The longest form is eight full groups or six groups and a dotted quad (45 bytes).
        guard t.count >= 2, t.count <= 45 else { return nil }
        var head: [UInt16] = []
        var tail: [UInt16] = []
        var compressed = false
        var i = 0
        if t[0] == 0x3A {
            guard t[1] == 0x3A else { return nil }
            compressed = true
            i = 2
        }
        while i < t.count {
            let start = i
            var value: UInt16 = 0
            var digits = 0
            while i < t.count, let nibble = hexDigitValue(t[i]) {
                digits += 1
                if digits > 4 { return nil }
                value = value << 4 | UInt16(nibble)
                i += 1
            }
            if i < t.count && t[i] == 0x2E {
                // A dotted-quad tail ends the address.
                guard let quad = parseV4(t[start...]) else { return nil }
                let groups = [UInt16(quad[0]) << 8 | UInt16(quad[1]), UInt16(quad[2]) << 8 | UInt16(quad[3])]
                if compressed { tail += groups } else { head += groups }
                i = t.count
                break
            }
            guard digits > 0 else { return nil }
            if compressed { tail.append(value) } else { head.append(value) }
            if i == t.count { break }
            guard t[i] == 0x3A else { return nil }
            i += 1
            guard i < t.count else { return nil }  // a single trailing colon
            if t[i] == 0x3A {
                guard !compressed else { return nil }
                compressed = true
                i += 1
            }
        }
        let groups = head.count + tail.count
        if compressed {
            guard groups <= 7 else { return nil }
        } else {
            guard groups == 8 else { return nil }
        }
        var all = head
        all += [UInt16](repeating: 0, count: 8 - groups)
        all += tail
        var out: [UInt8] = []
        out.reserveCapacity(16)
        for g in all {
            out.append(UInt8(g >> 8))
            out.append(UInt8(truncatingIfNeeded: g))
        }
        return out
    }

    /// Dotted quad, or the RFC 5952 form of IPv6 (lower-case, the longest run of two or more
    /// zero groups shortened to `::`, IPv4-mapped addresses with a dotted tail).
    public var description: String {
        var out: [UInt8] = []
        if bytes.count == 4 {
            appendDottedQuad(bytes[0..<4], to: &out)
            return String(decoding: out, as: UTF8.self)
        }
        var groups: [UInt16] = []
        for k in 0..<8 { groups.append(UInt16(bytes[2 * k]) << 8 | UInt16(bytes[2 * k + 1])) }
        let mapped = groups[0..<5].allSatisfy { $0 == 0 } && groups[5] == 0xFFFF
        let shown = mapped ? 6 : 8
        // The longest run of zero groups (the first of equal ones), if at least two long.
        var bestStart = -1
        var bestLength = 1
        var k = 0
        while k < shown {
            if groups[k] == 0 {
                var end = k
                while end < shown && groups[end] == 0 { end += 1 }
                if end - k > bestLength {
                    bestStart = k
                    bestLength = end - k
                }
                k = end
            } else {
                k += 1
            }
        }
        k = 0
        while k < shown {
            if k == bestStart {
                out += [0x3A, 0x3A]
                k += bestLength
                continue
            }
            if k > 0 && k != bestStart + bestLength { out.append(0x3A) }
            appendHex(groups[k], to: &out)
            k += 1
        }
        if mapped {
            if bestStart + bestLength != shown { out.append(0x3A) }
            appendDottedQuad(bytes[12..<16], to: &out)
        }
        return String(decoding: out, as: UTF8.self)
    }
}

private func hexDigitValue(_ c: UInt8) -> UInt8? {
    switch c {
    case 0x30...0x39: return c - 0x30
    case 0x61...0x66: return c - 0x61 + 10
    case 0x41...0x46: return c - 0x41 + 10
    default: return nil
    }
}

private func appendDecimal(_ value: Int, to out: inout [UInt8]) {
    if value >= 10 { appendDecimal(value / 10, to: &out) }
    out.append(UInt8(0x30 + value % 10))
}

private func appendDottedQuad(_ quad: ArraySlice<UInt8>, to out: inout [UInt8]) {
    var first = true
    for b in quad {
        if !first { out.append(0x2E) }
        first = false
        appendDecimal(Int(b), to: &out)
    }
}

private func appendHex(_ group: UInt16, to out: inout [UInt8]) {
    let digits: [UInt8] = [0x30, 0x31, 0x32, 0x33, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66]
    var started = false
    for shift in stride(from: 12, through: 0, by: -4) {
        let nibble = Int((group >> UInt16(shift)) & 0xF)
        if nibble != 0 || started || shift == 0 {
            out.append(digits[nibble])
            started = true
        }
    }
}
