/// Fuzz target `tunnel-notification`: the JSON payload of `$aws/things/THING/tunnels/notify`
/// (TunnelNotification.parse in Sources/TunnelCore/TunnelNotification.swift), which the MQTT
/// agent receives from the network.
///
/// Properties checked:
/// - parsing never crashes, reads nothing past the payload (each input is copied into an
///   allocation of exactly its length), and every error has a description;
/// - a parsed notification keeps the rules it was checked against (a visible-ASCII token, a
///   region name, 1 to 3 distinct service ids), and written back as JSON by the small encoder
///   below (key order, escapes and whitespace chosen from the input's hash) parses to the same
///   value;
/// - whitespace around the payload changes nothing but the error offsets;
/// - no error text, and no description of a parsed notification, shows the token: a marker is
///   put at the start of the string that follows each `"clientAccessToken":` of the input (a
///   lenient scan, which also finds it in broken JSON and in nested objects), and the marker
///   must not appear in what that input gives.
import TunnelCore

/// The encoder the round trip uses: JSON text for `n`, in one of several spellings.
func encode(_ n: TunnelNotification, style: UInt64) -> [UInt8] {
    let space: [UInt8] = style & 1 != 0 ? [0x20, 0x0A, 0x09] : []
    func string(_ text: String) -> [UInt8] {
        var out: [UInt8] = [0x22]
        for b in text.utf8 {
            switch b {
            case 0x22: out += [0x5C, 0x22]
            case 0x5C: out += [0x5C, 0x5C]
            case 0x2F where style & 2 != 0: out += [0x5C, 0x2F]
            default:
                if style & 4 != 0 || b < 0x20 {
                    let digits = Array((style & 8 != 0 ? "0123456789ABCDEF" : "0123456789abcdef").utf8)
                    out += [0x5C, 0x75, 0x30, 0x30, digits[Int(b >> 4)], digits[Int(b & 0xF)]]
                } else {
                    out.append(b)
                }
            }
        }
        return out + [0x22]
    }
    var services: [UInt8] = [0x5B]
    for (i, s) in n.services.enumerated() {
        if i > 0 { services += space + [0x2C] + space }
        services += string(s)
    }
    services += space + [0x5D]
    var members: [[UInt8]] = [
        string("clientAccessToken") + space + [0x3A] + space + string(n.clientAccessToken),
        string("clientMode") + [0x3A] + string(n.clientMode),
        string("region") + space + [0x3A] + string(n.region),
        string("services") + [0x3A] + space + services,
    ]
    if style & 16 != 0 { members.append(Array(#""unknown":{"a":[1,-2.5e3,true,null,"\u00e9"]}"#.utf8)) }
    let shift = Int((style >> 5) % UInt64(members.count))
    members = Array(members[shift...] + members[..<shift])
    if style & 64 != 0 { members.reverse() }
    var out: [UInt8] = space + [0x7B]
    for (i, m) in members.enumerated() {
        if i > 0 { out += [0x2C] + space }
        out += m
    }
    return out + space + [0x7D] + space
}

/// Parses `bytes` from an allocation of exactly their length.
func parseExactly(_ bytes: [UInt8]) -> Result<TunnelNotification, TunnelNotificationError> {
    var result: Result<TunnelNotification, TunnelNotificationError> = .failure(.notUTF8)
    forEachPiece(bytes, [bytes.count]) { piece in
        do throws(TunnelNotificationError) {
            result = .success(try TunnelNotification.parse(UnsafeRawBufferPointer(piece)))
        } catch {
            result = .failure(error)
        }
        return false
    }
    if bytes.isEmpty {
        do throws(TunnelNotificationError) {
            result = .success(try TunnelNotification.parse(UnsafeRawBufferPointer(start: nil, count: 0)))
        } catch {
            result = .failure(error)
        }
    }
    return result
}

func contains(_ haystack: [UInt8], _ needle: [UInt8]) -> Bool {
    guard needle.count <= haystack.count else { return false }
    for i in 0...(haystack.count - needle.count) where haystack[i] == needle[0] {
        if Array(haystack[i..<(i + needle.count)]) == needle { return true }
    }
    return false
}

/// Where each value that follows a `"clientAccessToken"` key starts (just after its opening
/// quote), found leniently: whitespace allowed around the colon, any JSON around it.
func tokenValueStarts(_ bytes: [UInt8]) -> [Int] {
    let key = Array(#""clientAccessToken""#.utf8)
    var starts: [Int] = []
    var i = 0
    while i + key.count <= bytes.count {
        guard Array(bytes[i..<(i + key.count)]) == key else {
            i += 1
            continue
        }
        var k = i + key.count
        func skipSpace() { while k < bytes.count && (bytes[k] == 0x20 || bytes[k] == 0x09 || bytes[k] == 0x0A || bytes[k] == 0x0D) { k += 1 } }
        skipSpace()
        if k < bytes.count && bytes[k] == 0x3A {
            k += 1
            skipSpace()
            if k < bytes.count && bytes[k] == 0x22 { starts.append(k + 1) }
        }
        i += key.count
    }
    return starts
}

let marker = Array("Q7zTokenMarker9x".utf8)

func checkNotification(_ n: TunnelNotification) {
    let token = Array(n.clientAccessToken.utf8)
    require(!token.isEmpty && token.allSatisfy { $0 >= 0x21 && $0 <= 0x7E }, "a token of \(token.count) bytes that is not visible ASCII")
    require(isValidRegionName(n.region), "the region '\(n.region)' was accepted")
    require((1...TunnelNotification.maximumServices).contains(n.services.count), "\(n.services.count) services accepted")
    for (i, s) in n.services.enumerated() {
        let id = Array(s.utf8)
        require(!id.isEmpty && id.count <= 128 && id.allSatisfy(isServiceIdByte), "the service id '\(s)' was accepted")
        for other in n.services[..<i] { require(!other.bytesEqual(s), "the service id '\(s)' was accepted twice") }
    }
    let mode = Array(n.clientMode.utf8)
    require(!mode.isEmpty && mode.count <= TunnelNotification.maximumClientModeLength, "a clientMode of \(mode.count) bytes was accepted")
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let bytes = inputBytes(data, size)
    let seed = fnv1a(bytes)
    let result = parseExactly(bytes)
    switch result {
    case .success(let n):
        require(bytes.count <= TunnelNotification.maximumLength, "a payload of \(bytes.count) bytes was accepted")
        checkNotification(n)
        for style in [seed, ~seed, 0] {
            let again = parseExactly(encode(n, style: style))
            require(again == .success(n), "written back in style \(style & 127), the notification parses as \(again)")
        }
    case .failure(let error):
        require(!error.description.isEmpty, "an error without a description")
    }

    // Whitespace around the payload: the same notification, or an error of the same kind.
    let padded = [0x20, 0x0A] + bytes + [0x0D, 0x09]
    if padded.count <= TunnelNotification.maximumLength {
        let other = parseExactly(padded)
        switch (result, other) {
        case (.success(let a), .success(let b)):
            require(a == b, "whitespace around the payload changed the notification")
        case (.failure, .failure):
            break
        default:
            require(false, "whitespace around the payload changed the outcome: \(result) then \(other)")
        }
    }

    // The token never shows: a marker at the start of every value of a clientAccessToken key.
    let starts = tokenValueStarts(bytes)
    if !starts.isEmpty && !contains(bytes, marker) {
        var marked: [UInt8] = []
        var from = 0
        for start in starts {
            marked += bytes[from..<start] + marker
            from = start
        }
        marked += bytes[from...]
        switch parseExactly(marked) {
        case .success(let n):
            require(!contains(Array(n.description.utf8), marker), "the description of a notification shows its token")
        case .failure(let error):
            require(!contains(Array(error.description.utf8), marker), "the error shows the token: \(error)")
        }
    }
    return 0
}
