// wire-probe: drives TunnelCore's codecs against real peers for the Python tests in Tests/Peers.
// Host-only test tooling: blocking sockets, one connection at a time. Never linked into the
// device binary. The command contract is documented in Tests/Peers/README.md.
import Glibc
import TunnelCore

@main
struct WireProbe {
    static func main() {
        let args = Array(CommandLine.arguments.dropFirst())
        guard let command = args.first else { usage() }
        let options = Options(Array(args.dropFirst()))
        switch command {
        case "pb-decode": ProtobufCommands.decode()
        case "pb-encode": ProtobufCommands.encode()
        case "pb-random": ProtobufCommands.random(seed: UInt64(options.int("seed", 1)), count: options.int("count", 100))
        case "ws-client": WebSocketClient.run(port: options.int("port", 0), fragments: max(1, options.int("fragment", 1)))
        case "ws-server":
            WebSocketServer.run(port: options.int("port", 0), connections: options.int("connections", 1),
                                fragments: max(1, options.int("fragment", 1)))
        default: usage()
        }
    }

    static func usage() -> Never {
        fail("usage: wire-probe pb-decode | pb-encode | pb-random --seed S --count N | ws-client --port P [--fragment K] | ws-server [--port P] [--connections N] [--fragment K]")
    }
}

struct Options {
    var values: [String: String] = [:]
    init(_ args: [String]) {
        var i = 0
        while i < args.count {
            if args[i].hasPrefix("--"), i + 1 < args.count {
                values[String(args[i].dropFirst(2))] = args[i + 1]
                i += 2
            } else {
                WireProbe.usage()
            }
        }
    }
    func int(_ name: String, _ fallback: Int) -> Int {
        guard let text = values[name] else { return fallback }
        guard let n = Int(text) else { fail("--\(name) needs a number, got '\(text)'") }
        return n
    }
}

// MARK: Output helpers

func say(_ line: String) {
    print(line)
    fflush(nil)
}

func fail(_ message: String) -> Never {
    // One line per error, whatever the message holds (HTTP bodies end with line breaks).
    var line = ""
    for c in message.unicodeScalars {
        switch c {
        case "\n": line += "\\n"
        case "\r": line += "\\r"
        default: line.unicodeScalars.append(c)
        }
    }
    say("error: \(line)")
    exit(1)
}

func hex<C: Collection>(_ bytes: C) -> String where C.Element == UInt8 {
    let digits = Array("0123456789abcdef")
    var out = ""
    out.reserveCapacity(bytes.count * 2)
    for b in bytes {
        out.append(digits[Int(b >> 4)])
        out.append(digits[Int(b & 15)])
    }
    return out
}

func unhex(_ text: Substring) -> [UInt8]? {
    let chars = Array(text.utf8)
    guard chars.count % 2 == 0 else { return nil }
    func nibble(_ c: UInt8) -> UInt8? {
        switch c {
        case 0x30...0x39: return c - 0x30
        case 0x61...0x66: return c - 0x61 + 10
        case 0x41...0x46: return c - 0x41 + 10
        default: return nil
        }
    }
    var out: [UInt8] = []
    out.reserveCapacity(chars.count / 2)
    var i = 0
    while i < chars.count {
        guard let hi = nibble(chars[i]), let lo = nibble(chars[i + 1]) else { return nil }
        out.append(hi << 4 | lo)
        i += 2
    }
    return out
}

func readAllStandardInput() -> [UInt8] {
    var data: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = chunk.withUnsafeMutableBytes { read(0, $0.baseAddress, $0.count) }
        if n <= 0 { break }
        data.append(contentsOf: chunk[0..<n])
    }
    return data
}

/// SplitMix64: a small deterministic generator so that a seed reproduces a run.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

// MARK: Protobuf commands

/// A message with owned payload bytes, for the text form used with the Python peer:
/// `type=<int> stream=<int> ignorable=<0|1> payload=<hex> service=<hex> ids=<hex>,... conn=<int>`.
struct OwnedMessage {
    var type: Int32 = 0
    var streamId: Int32 = 0
    var ignorable = false
    var payload: [UInt8] = []
    var serviceId: [UInt8] = []
    var ids: [[UInt8]] = []
    var connectionId: UInt32 = 0

    init() {}

    init(_ m: TunnelMessage) {
        type = m.type.rawValue
        streamId = m.streamId
        ignorable = m.ignorable
        payload = Array(m.payload)
        serviceId = m.serviceId
        ids = m.availableServiceIds
        connectionId = m.connectionId
    }

    init?(canonical line: Substring) {
        for field in line.split(separator: " ") {
            guard let eq = field.firstIndex(of: "=") else { return nil }
            let key = field[..<eq], value = field[field.index(after: eq)...]
            switch key {
            case "type": guard let v = Int32(value) else { return nil }; type = v
            case "stream": guard let v = Int32(value) else { return nil }; streamId = v
            case "ignorable": ignorable = value == "1"
            case "payload": guard let v = unhex(value) else { return nil }; payload = v
            case "service": guard let v = unhex(value) else { return nil }; serviceId = v
            case "ids":
                ids = []
                if !value.isEmpty {
                    for item in value.split(separator: ",", omittingEmptySubsequences: false) {
                        guard let v = unhex(item) else { return nil }
                        ids.append(v)
                    }
                }
            case "conn": guard let v = UInt32(value) else { return nil }; connectionId = v
            default: return nil
            }
        }
    }

    var canonical: String {
        "type=\(type) stream=\(streamId) ignorable=\(ignorable ? 1 : 0) payload=\(hex(payload)) service=\(hex(serviceId)) ids=\(ids.map { hex($0) }.joined(separator: ",")) conn=\(connectionId)"
    }

    func encode() -> Result<[UInt8], TunnelEncodingError> {
        payload.withUnsafeBytes { view in
            let m = TunnelMessage(type: MessageType(rawValue: type), streamId: streamId, ignorable: ignorable,
                                  payload: view, serviceId: serviceId, availableServiceIds: ids, connectionId: connectionId)
            do throws(TunnelEncodingError) { return .success(try m.encoded()) } catch { return .failure(error) }
        }
    }
}

enum ProtobufCommands {
    /// Splits stdin into tunnel frames with `TunnelFrameDecoder` (fed in uneven pieces, so the
    /// accumulator path is exercised too) and decodes each.
    static func decode() {
        let input = readAllStandardInput()
        let decoder = TunnelFrameDecoder()
        var rng = SplitMix64(seed: 7)
        input.withUnsafeBytes { all in
            var offset = 0
            while offset < all.count {
                let piece = min(all.count - offset, 1 + Int(rng.next() % 70_000))
                var chunk = UnsafeRawBufferPointer(rebasing: all[offset..<(offset + piece)])
                offset += piece
                while let frame = decoder.next(&chunk) {
                    do throws(ProtobufDecodingError) {
                        say(OwnedMessage(try TunnelMessage.decode(frame)).canonical)
                    } catch {
                        say("error: \(error)")
                    }
                }
            }
        }
        if decoder.bufferedByteCount > 0 { fail("input ended inside a frame (\(decoder.bufferedByteCount) bytes buffered)") }
    }

    static func encode() {
        let text = String(decoding: readAllStandardInput(), as: UTF8.self)
        for line in text.split(separator: "\n") {
            guard let m = OwnedMessage(canonical: line) else {
                say("error: cannot parse line '\(line)'")
                continue
            }
            switch m.encode() {
            case .success(let bytes): say(hex(bytes))
            case .failure(let error): say("error: \(error)")
            }
        }
    }

    static func random(seed: UInt64, count: Int) {
        var rng = SplitMix64(seed: seed)
        let alphabet: [String] = ["S", "H", "a", "z", "0", "9", "-", "_", ":", "é", "日", "🙂"]
        func pick<T>(_ items: [T]) -> T { items[Int(rng.next() % UInt64(items.count))] }
        func chance(_ percent: UInt64) -> Bool { rng.next() % 100 < percent }
        func text(_ maxLength: Int) -> [UInt8] {
            let n = Int(rng.next() % UInt64(maxLength + 1))
            var s = ""
            for _ in 0..<n { s += pick(alphabet) }
            return Array(s.utf8)
        }
        for _ in 0..<count {
            var m = OwnedMessage()
            m.type = chance(85) ? Int32(rng.next() % 8) : pick([9, 100, -3, Int32.min, Int32.max])
            m.streamId = chance(60) ? Int32(rng.next() % 1000) : pick([0, -1, Int32.min, Int32.max, 1 << 20])
            m.ignorable = chance(30)
            let payloadLength = chance(95) ? Int(rng.next() % 300) : Int(rng.next() % UInt64(TunnelMessage.maximumPayloadLength + 1))
            m.payload = (0..<payloadLength).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
            if chance(70) { m.serviceId = text(12) }
            if chance(20) { m.ids = (0..<Int(rng.next() % 5)).map { _ in [0x41] + text(6) } }
            m.connectionId = chance(60) ? UInt32(rng.next() % 200) : pick([0, UInt32.max, 1 << 28])
            switch m.encode() {
            case .success(let bytes): say("\(m.canonical)\t\(hex(bytes))")
            case .failure(let error): fail("our encoder refused a generated message: \(error)")
            }
        }
    }
}
