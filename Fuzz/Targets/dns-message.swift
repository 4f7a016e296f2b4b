/// Fuzz target `dns-message`: the stub resolver's reading of a DNS response (DNSMessage and
/// DNSReader in Sources/TunnelCore/DNSMessage.swift) and its host name syntax (DNSName).
///
/// The input is a response. The query it is checked against takes its id and question from the
/// input itself (when the question's name parses), so that mutations get past the id and question
/// checks to the answer section.
///
/// Properties checked:
/// - a name read at any of the first 64 offsets after the header stays inside the message, ends
///   after where it started (after its first pointer, if any), and is at most 255 bytes in wire
///   form, with lower-case letters and a root label at its end only;
/// - an accepted answer has addresses of the asked type only, without repeats, and every one of
///   them is found again in a response written from them;
/// - a host name that `DNSName` accepts has valid wire form, prints as text that parses back to
///   it, and its query, turned into an empty answer, reads back as a NODATA answer for it.
@testable import TunnelCore

func readName(_ reader: DNSReader, at offset: Int) -> (DNSName, Int)? {
    do throws(DNSError) {
        return try reader.name(at: offset)
    } catch {
        _ = error.description
        return nil
    }
}

func checkWireName(_ name: DNSName) {
    let wire = name.wire
    require(wire.count <= DNSName.maximumWireLength, "a name of \(wire.count) wire bytes")
    var i = 0
    while i < wire.count && wire[i] != 0 {
        let n = Int(wire[i])
        require(n <= 63, "a label of \(n) bytes")
        require(i + 1 + n < wire.count, "a label runs past the end of the name")
        for c in wire[(i + 1)...(i + n)] { require(!(c >= 0x41 && c <= 0x5A), "an upper-case letter in a read name") }
        i += 1 + n
    }
    require(i == wire.count - 1, "a name does not end with the root label")
    _ = name.description
}

func parse(_ message: [UInt8], id: UInt16, name: DNSName, type: DNSQueryType) -> Result<DNSAnswer, DNSError> {
    do throws(DNSError) {
        return .success(try DNSMessage.parseResponse(message, id: id, name: name, type: type))
    } catch {
        _ = error.description
        return .failure(error)
    }
}

/// A response to (`id`, `name`, `type`) whose answer section holds `addresses`, owned by the
/// question's name through a compression pointer.
func response(id: UInt16, name: DNSName, type: DNSQueryType, addresses: [IPAddress]) -> [UInt8] {
    var out: [UInt8] = [UInt8(id >> 8), UInt8(id & 0xFF), 0x81, 0x80, 0, 1,
                        UInt8(addresses.count >> 8), UInt8(addresses.count & 0xFF), 0, 0, 0, 0]
    out += name.wire
    out += [UInt8(type.code >> 8), UInt8(type.code & 0xFF), 0, 1]
    for address in addresses {
        out += [0xC0, 12, UInt8(type.code >> 8), UInt8(type.code & 0xFF), 0, 1, 0, 0, 0x0E, 0x10,
                0, UInt8(address.bytes.count)]
        out += address.bytes
    }
    return out
}

func checkResponse(_ bytes: [UInt8]) {
    var parsedQuestion: (DNSName, Int)? = nil
    bytes.withUnsafeBytes { raw in
        let reader = DNSReader(raw)
        // Names at the first offsets after the header: wherever a name may start.
        if raw.count > DNSMessage.headerLength {
            for offset in DNSMessage.headerLength..<min(raw.count, DNSMessage.headerLength + 64) {
                guard let (name, end) = readName(reader, at: offset) else { continue }
                require(end > offset && end <= raw.count, "a name at \(offset) ends at \(end) in \(raw.count) bytes")
                checkWireName(name)
                if offset == DNSMessage.headerLength { parsedQuestion = (name, end) }
            }
        }
        _ = DNSMessage.id(of: raw)
    }
    // Without a readable question the response cannot match any query; it is still parsed, for
    // the checks that come before the question.
    let question = parsedQuestion?.0 ?? (try! DNSName("www.example.com"))
    let id = bytes.count >= 2 ? UInt16(bytes[0]) << 8 | UInt16(bytes[1]) : 0
    for type in [DNSQueryType.a, .aaaa] {
        guard case .success(let answer) = parse(bytes, id: id, name: question, type: type) else { continue }
        checkWireName(answer.canonicalName)
        for (i, address) in answer.addresses.enumerated() {
            require(address.bytes.count == (type == .a ? 4 : 16), "a \(type) answer holds \(address)")
            require(!answer.addresses[..<i].contains(address), "address \(address) is repeated")
        }
        if !answer.addresses.isEmpty {
            let written = response(id: id, name: question, type: type, addresses: answer.addresses)
            let again = parse(written, id: id, name: question, type: type)
            require(again == .success(DNSAnswer(addresses: answer.addresses, canonicalName: question)),
                    "a response written from the addresses reads back as \(again)")
        }
    }
}

func checkHostName(_ bytes: [UInt8]) {
    let text = String(decoding: bytes, as: UTF8.self)
    let name: DNSName
    do throws(DNSError) {
        name = try DNSName(text)
    } catch {
        _ = error.description
        return
    }
    checkWireName(name)
    require(name.wire.count <= DNSName.maximumWireLength, "DNSName accepted \(name.wire.count) wire bytes")
    let printed = name.description
    require((try? DNSName(printed)) == name, "\(printed) does not parse back to the same name")
    let id = UInt16(truncatingIfNeeded: fnv1a(bytes))
    for type in [DNSQueryType.a, .aaaa] {
        var query = DNSMessage.query(id: id, name: name, type: type)
        require(query.withUnsafeBytes { DNSMessage.id(of: $0) } == id, "the query's id is not the one given")
        query[2] |= 0x80
        require(parse(query, id: id, name: name, type: type) == .success(DNSAnswer(addresses: [], canonicalName: name)),
                "a query turned into an empty response does not read as NODATA")
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let bytes = inputBytes(data, size)
    checkResponse(bytes)
    if bytes.count <= 300 { checkHostName(bytes) }
    return 0
}
