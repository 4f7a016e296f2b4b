/// Fuzz target `tunnel-message`: the tunnel framing (2-byte length prefix, TunnelFrame.swift) and
/// the protobuf message decoder (TunnelMessage.swift, ProtobufWire.swift) over an arbitrary byte
/// stream, as it arrives from the WebSocket.
///
/// Properties checked:
/// - the frame decoder only consumes a prefix of each piece, never stops with input left, returns
///   each message with exactly the length its prefix gave, and keeps less than one whole framed
///   message buffered;
/// - the same messages come out whether the stream arrives whole, byte by byte, or in mixed pieces;
/// - every message either decodes or throws an error whose offset lies inside it; a decoded
///   payload is a view inside the message, within the payload limit, and the string fields are
///   UTF-8;
/// - a decoded message encodes (unless its canonical form outgrows the 2-byte prefix), the
///   encoding decodes to the same fields, re-encoding it gives the same bytes, and framing in place
///   gives the same bytes as `TunnelFrame.encode`;
/// - the service ids kept from SERVICE_IDS are the message's, non-empty, distinct and within the
///   limits, and what is logged of them has no control characters;
/// - `isValidUTF8` agrees with the standard library's UTF-8 validation.
@testable import TunnelCore

struct FramedStream: Equatable {
    var messages: [[UInt8]] = []
    var buffered = 0
}

func splitMessages(_ bytes: [UInt8], plan: [Int]) -> FramedStream {
    let decoder = TunnelFrameDecoder()
    var out = FramedStream()
    var consumed = 0
    var delivered = 0
    forEachPiece(bytes, plan) { piece in
        var input = UnsafeRawBufferPointer(piece)
        while true {
            let before = input
            let message = decoder.next(&input)
            consumed += consumedPrefix(before, input)
            guard let message else {
                require(input.isEmpty, "the frame decoder returned nothing with \(input.count) bytes left")
                return true
            }
            require(message.count <= TunnelFrame.maximumMessageLength, "a message of \(message.count) bytes")
            out.messages.append(Array(message))
            delivered += TunnelFrame.prefixLength + message.count
        }
    }
    out.buffered = decoder.bufferedByteCount
    require(out.buffered < TunnelFrame.prefixLength + TunnelFrame.maximumMessageLength,
            "\(out.buffered) bytes buffered, a whole framed message or more")
    require(consumed == bytes.count, "the frame decoder consumed \(consumed) of \(bytes.count) bytes")
    require(delivered + out.buffered == bytes.count,
            "messages (\(delivered) bytes framed) and buffered bytes (\(out.buffered)) do not add up to the input")
    return out
}

/// The fields of a message with the payload copied, for comparisons.
struct MessageFields: Equatable {
    var type: Int32
    var streamId: Int32
    var ignorable: Bool
    var payload: [UInt8]
    var serviceId: [UInt8]
    var availableServiceIds: [[UInt8]]
    var connectionId: UInt32

    init(_ m: TunnelMessage) {
        type = m.type.rawValue
        streamId = m.streamId
        ignorable = m.ignorable
        payload = Array(m.payload)
        serviceId = m.serviceId
        availableServiceIds = m.availableServiceIds
        connectionId = m.connectionId
    }
}

func decodeMessage(_ bytes: UnsafeRawBufferPointer) -> Result<TunnelMessage, ProtobufDecodingError> {
    do throws(ProtobufDecodingError) {
        return .success(try TunnelMessage.decode(bytes))
    } catch {
        return .failure(error)
    }
}

func checkMessage(_ bytes: [UInt8]) {
    bytes.withUnsafeBytes { raw in
        let message: TunnelMessage
        switch decodeMessage(raw) {
        case .failure(let error):
            require(error.offset >= 0 && error.offset <= raw.count,
                    "error offset \(error.offset) outside a message of \(raw.count) bytes")
            _ = error.description
            return
        case .success(let m):
            message = m
        }
        _ = message.type.description
        checkServiceIds(message)
        require(isInside(message.payload, raw), "the payload view lies outside the message")
        require(message.payload.count <= TunnelMessage.maximumPayloadLength, "a payload of \(message.payload.count) bytes was accepted")
        require(message.serviceId.withUnsafeBytes { isValidUTF8($0) }, "a service id that is not UTF-8 was accepted")
        for id in message.availableServiceIds {
            require(id.withUnsafeBytes { isValidUTF8($0) }, "an available service id that is not UTF-8 was accepted")
        }

        let encoded: [UInt8]
        do throws(TunnelEncodingError) {
            encoded = try message.encoded()
        } catch {
            // Canonical encoding can be longer than the input (a negative type or stream id takes
            // 10 bytes however it was sent), so only a message that really outgrows the prefix may
            // be refused.
            require(message.encodedLength > TunnelFrame.maximumMessageLength,
                    "a decoded message of \(message.encodedLength) encoded bytes could not be encoded: \(error)")
            return
        }
        require(encoded.count == message.encodedLength, "encoded() wrote \(encoded.count) bytes, encodedLength says \(message.encodedLength)")
        let fields = MessageFields(message)
        encoded.withUnsafeBytes { again in
            switch decodeMessage(again) {
            case .failure(let error):
                require(false, "an encoded message does not decode: \(error)")
            case .success(let decoded):
                require(MessageFields(decoded) == fields, "decode(encode(message)) differs from the message")
                require((try? decoded.encoded()) == encoded, "encoding is not canonical: a second round gives other bytes")
            }
        }
        checkFraming(message, encoded: encoded)
    }
}

/// What the sessions take from SERVICE_IDS, and how service ids from the peer are logged.
func checkServiceIds(_ message: TunnelMessage) {
    let (ids, refused) = message.checkedServiceIds
    require(ids.count <= TunnelMessage.maximumServiceIdCount, "\(ids.count) service ids were kept")
    for (i, id) in ids.enumerated() {
        require(!id.isEmpty && id.utf8.count <= TunnelMessage.maximumServiceIdLength, "service id of \(id.utf8.count) bytes kept")
        require(!ids[..<i].contains(id), "service id kept twice")
        require(message.availableServiceIds.contains(Array(id.utf8)), "a kept service id is not one of the message's")
    }
    for line in refused { require(isLoggable(line), "a refusal line with a control character: \(line)") }
    for raw in message.availableServiceIds + [message.serviceId] {
        let shown = loggableServiceId(raw)
        require(isLoggable(shown), "loggableServiceId left a control character in \(shown)")
    }
}

func isLoggable(_ text: String) -> Bool {
    text.unicodeScalars.allSatisfy { $0.value >= 0x20 && $0.value != 0x7F }
}

/// `TunnelFrame.frameInPlace` around the payload must write what `TunnelFrame.encode` writes.
func checkFraming(_ message: TunnelMessage, encoded: [UInt8]) {
    let framed: [UInt8]
    do throws(TunnelEncodingError) {
        framed = try TunnelFrame.encode(message)
    } catch {
        require(false, "TunnelFrame.encode refused an encodable message: \(error)")
        return
    }
    require(framed == [UInt8(encoded.count >> 8), UInt8(encoded.count & 0xFF)] + encoded, "TunnelFrame.encode differs from prefix + encoded()")
    let payloadLength = message.payload.count
    let head = TunnelFrame.headLength(message, payloadLength: payloadLength)
    let total = head + payloadLength + message.tailLength
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: total, alignment: 1)
    defer { buffer.deallocate() }
    if payloadLength > 0 { (buffer.baseAddress! + head).copyMemory(from: message.payload.baseAddress!, byteCount: payloadLength) }
    do throws(TunnelEncodingError) {
        let written = try TunnelFrame.frameInPlace(message, payload: buffer.baseAddress! + head, payloadLength: payloadLength)
        require(written == head, "frameInPlace wrote a head of \(written) bytes, headLength says \(head)")
        require(Array(buffer) == framed, "frameInPlace differs from TunnelFrame.encode")
    } catch {
        require(false, "frameInPlace refused an encodable message: \(error)")
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let bytes = inputBytes(data, size)
    let plans = splitPlans(count: bytes.count, seed: fnv1a(bytes))
    let whole = splitMessages(bytes, plan: plans[0])
    for plan in plans.dropFirst() {
        require(splitMessages(bytes, plan: plan) == whole, "framing depends on how the input is split (\(plan.count) pieces)")
    }
    for message in whole.messages { checkMessage(message) }
    // The input itself as one message (no prefix), so that mutations reach the protobuf decoder
    // directly too.
    checkMessage(bytes)
    let valid = bytes.withUnsafeBytes { isValidUTF8($0) }
    require(valid == (String(validating: bytes, as: UTF8.self) != nil), "isValidUTF8 says \(valid), the standard library disagrees")
    return 0
}
