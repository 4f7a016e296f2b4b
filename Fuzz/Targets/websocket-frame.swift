/// Fuzz target `websocket-frame`: the RFC 6455 frame decoder (Sources/TunnelCore/WebSocketFrame.swift)
/// over an arbitrary byte stream, in both roles.
///
/// Properties checked:
/// - the decoder only ever consumes a prefix of each piece it is given, and stops with input left
///   over only once it is finished (close frame or error);
/// - every view it returns lies inside the bytes it consumed in that call, and control payloads,
///   close codes and reasons obey RFC 6455;
/// - the same events come out whether the stream arrives whole, byte by byte, or in mixed pieces;
/// - re-encoding the events with `WebSocketFrameEncoder` and decoding again gives the same events;
/// - `WebSocketMaskingKey.apply` (word-at-a-time) equals a byte-by-byte XOR at every phase.
@testable import TunnelCore

/// One decoder result, with its bytes copied out of the decoder's views. Binary pieces are gathered
/// into the message they belong to, so that results can be compared across ways of splitting.
enum FrameRecord: Equatable {
    /// A complete binary message.
    case message([UInt8])
    /// Bytes of a message that a control frame interrupted (the rest follows later).
    case partial([UInt8])
    /// Bytes of a message still open when the input ended or an error was found.
    case trailing([UInt8])
    case ping([UInt8])
    case pong([UInt8])
    case close(UInt16?, [UInt8])
    case error(WebSocketProtocolError)
}

struct FrameRun: Equatable {
    var records: [FrameRecord] = []
    var consumed: UInt64 = 0
    var finished = false
}

func decodeFrames(_ bytes: [UInt8], role: WebSocketRole, maximum: Int, plan: [Int]) -> FrameRun {
    let decoder = WebSocketFrameDecoder(role: role, maximumFramePayload: maximum)
    var run = FrameRun()
    var open: [UInt8] = []
    var stopped = false
    forEachPiece(bytes, plan) { piece in
        var input = piece
        while true {
            let before = UnsafeRawBufferPointer(input)
            let event: WebSocketEvent?
            do throws(WebSocketProtocolError) {
                event = try decoder.next(&input)
            } catch {
                run.consumed += UInt64(consumedPrefix(before, UnsafeRawBufferPointer(input)))
                require(decoder.isFinished, "the decoder threw \(error) but is not finished")
                require(error.offset <= run.consumed, "error offset \(error.offset) is past the \(run.consumed) bytes consumed")
                _ = error.description
                _ = error.closeCode
                if !open.isEmpty { run.records.append(.trailing(open)); open = [] }
                run.records.append(.error(error))
                stopped = true
                return false
            }
            let used = consumedPrefix(before, UnsafeRawBufferPointer(input))
            run.consumed += UInt64(used)
            let consumedNow = UnsafeRawBufferPointer(start: before.baseAddress, count: used)
            guard let event else {
                require(input.isEmpty || decoder.isFinished,
                        "the decoder returned nothing with \(input.count) bytes left and is not finished")
                return true
            }
            switch event {
            case .binary(let view, let isMessageEnd):
                require(isInside(UnsafeRawBufferPointer(view), consumedNow), "a binary piece lies outside the bytes consumed")
                require(view.count <= maximum, "a binary piece of \(view.count) bytes exceeds the frame limit \(maximum)")
                open += UnsafeRawBufferPointer(view)
                if isMessageEnd {
                    run.records.append(.message(open))
                    open = []
                }
            case .ping(let view), .pong(let view):
                require(view.count <= 125, "a control payload of \(view.count) bytes")
                if !open.isEmpty { run.records.append(.partial(open)); open = [] }
                if case .ping = event { run.records.append(.ping(Array(view))) } else { run.records.append(.pong(Array(view))) }
            case .close(let code, let reason):
                require(reason.count <= 123, "a close reason of \(reason.count) bytes")
                require(code != nil || reason.isEmpty, "a close reason without a code")
                if let code { require(WebSocketCloseCode.isValidOnWire(code), "close code \(code) was accepted") }
                require(isValidUTF8(reason), "a close reason that is not UTF-8 was accepted")
                require(decoder.isFinished, "the decoder is not finished after a close frame")
                if !open.isEmpty { run.records.append(.partial(open)); open = [] }
                run.records.append(.close(code, Array(reason)))
            }
        }
    }
    if !stopped && !open.isEmpty { run.records.append(.trailing(open)) }
    require(decoder.streamOffset == run.consumed,
            "streamOffset \(decoder.streamOffset) differs from the \(run.consumed) bytes consumed")
    run.finished = decoder.isFinished
    return run
}

/// Frames that decode to `records` (errors left out): each message in frames of at most `maximum`
/// bytes, masked with `key` when the decoder is a server.
func encodeFrames(_ records: [FrameRecord], maximum: Int, key: WebSocketMaskingKey?) -> [UInt8] {
    var out: [UInt8] = []
    var inMessage = false
    func data(_ bytes: [UInt8], fin: Bool) {
        require(maximum > 0 || bytes.isEmpty, "payload bytes were decoded under a frame limit of 0")
        var start = 0
        repeat {
            let n = min(bytes.count - start, maximum)
            let last = start + n == bytes.count
            let opcode: WebSocketOpcode = inMessage ? .continuation : .binary
            out += WebSocketFrameEncoder.frame(opcode: opcode, fin: fin && last, payload: Array(bytes[start..<(start + n)]),
                                               maskingKey: key)
            inMessage = !(fin && last)
            start += n
        } while start < bytes.count
    }
    for record in records {
        switch record {
        case .message(let b): data(b, fin: true)
        case .partial(let b), .trailing(let b): data(b, fin: false)
        case .ping(let p): out += WebSocketFrameEncoder.frame(opcode: .ping, payload: p, maskingKey: key)
        case .pong(let p): out += WebSocketFrameEncoder.frame(opcode: .pong, payload: p, maskingKey: key)
        case .close(nil, _): out += WebSocketFrameEncoder.frame(opcode: .close, payload: [], maskingKey: key)
        case .close(let code?, let reason):
            out += WebSocketFrameEncoder.frame(opcode: .close, payload: [UInt8(code >> 8), UInt8(code & 0xFF)] + reason,
                                               maskingKey: key)
        case .error: break
        }
    }
    return out
}

func checkMasking(_ bytes: [UInt8], seed: UInt64) {
    guard bytes.count >= 4 else { return }
    let key = WebSocketMaskingKey(bytes[0], bytes[1], bytes[2], bytes[3])
    let keyBytes = Array(bytes[0..<4])
    let offset = Int(seed & 7)
    var masked = bytes
    masked.withUnsafeMutableBytes { key.apply(to: $0, offset: offset) }
    for i in 0..<bytes.count {
        require(masked[i] == bytes[i] ^ keyBytes[(offset + i) & 3], "masking differs from a byte-wise XOR at byte \(i)")
    }
    masked.withUnsafeMutableBytes { key.apply(to: $0, offset: offset) }
    require(masked == bytes, "masking twice does not give the input back")
}

/// Frame limits tried besides the service's: none, tiny, and both sides of each length encoding.
let frameLimits = [0, 1, 125, 126, 65_535, 65_536]

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let bytes = inputBytes(data, size)
    let seed = fnv1a(bytes)
    let limits = [WebSocketFrameDecoder.defaultMaximumFramePayload, frameLimits[Int(seed % UInt64(frameLimits.count))]]
    for role in [WebSocketRole.client, .server] {
        for maximum in limits {
            let plans = splitPlans(count: bytes.count, seed: seed, bytewiseLimit: 512)
            let whole = decodeFrames(bytes, role: role, maximum: maximum, plan: plans[0])
            for plan in plans.dropFirst() {
                let other = decodeFrames(bytes, role: role, maximum: maximum, plan: plan)
                require(other == whole, "\(role) decoding depends on how the input is split (\(plan.count) pieces)")
            }
            let key: WebSocketMaskingKey? = role == .server ? WebSocketMaskingKey(UInt32(truncatingIfNeeded: seed)) : nil
            let encoded = encodeFrames(whole.records, maximum: maximum, key: key)
            let again = decodeFrames(encoded, role: role, maximum: maximum, plan: encoded.isEmpty ? [] : [encoded.count])
            let expected = whole.records.filter { if case .error = $0 { return false } else { return true } }
            require(again.records == expected, "\(role): re-encoded frames decode to different events")
            require(again.consumed == UInt64(encoded.count), "\(role): re-encoded frames were not all consumed")
        }
    }
    checkMasking(bytes, seed: seed)
    return 0
}
