/// RFC 6455 framing for the tunnel's WebSocket: binary messages only, no extensions, frames of at
/// most 131,076 payload bytes (the service's limit, docs/PROTOCOL.md §4).

/// Which end of the WebSocket we are. A client masks what it sends and expects unmasked frames;
/// a server the reverse.
public enum WebSocketRole: Equatable, CustomStringConvertible {
    case client
    case server

    public var description: String { self == .client ? "client" : "server" }
}

public struct WebSocketOpcode: RawRepresentable, Equatable, Sendable, CustomStringConvertible {
    public var rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    public static let continuation = WebSocketOpcode(rawValue: 0x0)
    public static let text = WebSocketOpcode(rawValue: 0x1)
    public static let binary = WebSocketOpcode(rawValue: 0x2)
    public static let close = WebSocketOpcode(rawValue: 0x8)
    public static let ping = WebSocketOpcode(rawValue: 0x9)
    public static let pong = WebSocketOpcode(rawValue: 0xA)

    public var isControl: Bool { rawValue & 0x8 != 0 }
    var isDefined: Bool { rawValue <= 0x2 || (rawValue >= 0x8 && rawValue <= 0xA) }

    public var description: String {
        switch rawValue {
        case 0x0: return "continuation"
        case 0x1: return "text"
        case 0x2: return "binary"
        case 0x8: return "close"
        case 0x9: return "ping"
        case 0xA: return "pong"
        default: return "reserved opcode 0x\(hexDigits(UInt64(rawValue)))"
        }
    }
}

/// Close status codes used by this project (RFC 6455 §7.4.1).
public enum WebSocketCloseCode {
    public static let normal: UInt16 = 1000
    public static let goingAway: UInt16 = 1001
    public static let protocolError: UInt16 = 1002
    public static let unsupportedData: UInt16 = 1003
    public static let invalidPayload: UInt16 = 1007
    public static let policyViolation: UInt16 = 1008
    public static let messageTooBig: UInt16 = 1009
    public static let internalError: UInt16 = 1011

    /// Whether `code` may appear in a close frame on the wire.
    public static func isValidOnWire(_ code: UInt16) -> Bool {
        switch code {
        case 1000...1003, 1007...1014: return true
        case 3000...4999: return true
        default: return false
        }
    }
}

/// The 4-byte key a client XORs over every payload byte it sends.
public struct WebSocketMaskingKey: Equatable {
    public var b0: UInt8, b1: UInt8, b2: UInt8, b3: UInt8

    public init(_ b0: UInt8, _ b1: UInt8, _ b2: UInt8, _ b3: UInt8) {
        self.b0 = b0; self.b1 = b1; self.b2 = b2; self.b3 = b3
    }

    /// Builds a key from 32 random bits (most significant byte first).
    public init(_ bits: UInt32) {
        self.init(UInt8(truncatingIfNeeded: bits >> 24), UInt8(truncatingIfNeeded: bits >> 16),
                  UInt8(truncatingIfNeeded: bits >> 8), UInt8(truncatingIfNeeded: bits))
    }

    subscript(index: Int) -> UInt8 {
        switch index & 3 {
        case 0: return b0
        case 1: return b1
        case 2: return b2
        default: return b3
        }
    }

    /// XORs the key over `bytes` in place, as if `bytes` started `offset` bytes into a payload.
    /// Masking and unmasking are the same operation.
    public func apply(to bytes: UnsafeMutableRawBufferPointer, offset: Int = 0) {
        guard let base = bytes.baseAddress else { return }
        let count = bytes.count
        var i = 0
        // Whole 8-byte words first: a 64-bit pattern of the key rotated to the current phase.
        if count >= 16 {
            var pattern: UInt64 = 0
            for k in 0..<8 { pattern |= UInt64(self[offset + k]) << (8 * UInt64(k)) }
            // The pattern above is little-endian byte order; swap on big-endian hosts.
            pattern = UInt64(littleEndian: pattern)
            while i + 8 <= count {
                let word = (base + i).loadUnaligned(as: UInt64.self)
                (base + i).storeBytes(of: word ^ pattern, as: UInt64.self)
                i += 8
            }
        }
        while i < count {
            base.storeBytes(of: base.load(fromByteOffset: i, as: UInt8.self) ^ self[offset + i], toByteOffset: i, as: UInt8.self)
            i += 1
        }
    }
}

/// What the decoder found next in the byte stream.
public enum WebSocketEvent {
    /// A piece of a binary message, unmasked in place, as a view into the input. `isMessageEnd`
    /// is true on the last piece of a message (a message of 0 bytes yields one empty piece).
    case binary(UnsafeMutableRawBufferPointer, isMessageEnd: Bool)
    /// A ping and its payload (valid until the next call to the decoder).
    case ping(UnsafeRawBufferPointer)
    /// A pong and its payload (valid until the next call to the decoder).
    case pong(UnsafeRawBufferPointer)
    /// A close frame; `code` is nil when the frame had no payload.
    case close(code: UInt16?, reason: UnsafeRawBufferPointer)
}

/// A violation of RFC 6455 or of the tunnel's rules, with the close code to answer it with.
public struct WebSocketProtocolError: Error, Equatable, CustomStringConvertible {
    public enum Reason: Equatable, Sendable {
        case reservedBitsSet(UInt8)
        case reservedOpcode(UInt8)
        case textFrame
        case unmaskedClientFrame
        case maskedServerFrame
        case fragmentedControlFrame(WebSocketOpcode)
        case controlFrameTooLong(WebSocketOpcode, Int)
        case frameTooLarge(UInt64, limit: Int)
        case continuationWithoutMessage
        case messageStartedInsideMessage
        case closePayloadOfOneByte
        case invalidCloseCode(UInt16)
        case closeReasonNotUTF8
    }

    public let reason: Reason
    /// Offset in the byte stream of the first byte of the offending frame (64-bit: a long
    /// session passes 2 GiB, which a 32-bit Int could not count).
    public let offset: UInt64

    public init(_ reason: Reason, offset: UInt64) {
        self.reason = reason
        self.offset = offset
    }

    /// The status code to send in our close frame.
    public var closeCode: UInt16 {
        switch reason {
        case .textFrame: return WebSocketCloseCode.unsupportedData
        case .frameTooLarge: return WebSocketCloseCode.messageTooBig
        case .closeReasonNotUTF8: return WebSocketCloseCode.invalidPayload
        default: return WebSocketCloseCode.protocolError
        }
    }

    public var description: String {
        let place = "in the frame at stream byte \(offset)"
        switch reason {
        case .reservedBitsSet(let bits):
            return "WebSocket RSV bits 0x\(hexDigits(UInt64(bits))) set \(place), but no extension was negotiated"
        case .reservedOpcode(let op):
            return "WebSocket opcode 0x\(hexDigits(UInt64(op))) is reserved \(place)"
        case .textFrame:
            return "WebSocket text frame \(place): the tunnel carries binary frames only"
        case .unmaskedClientFrame:
            return "WebSocket client frame is not masked \(place) (RFC 6455 §5.1 requires masking)"
        case .maskedServerFrame:
            return "WebSocket server frame is masked \(place) (RFC 6455 §5.1 forbids it)"
        case .fragmentedControlFrame(let op):
            return "WebSocket \(op) frame is fragmented \(place); control frames must have FIN set"
        case .controlFrameTooLong(let op, let n):
            return "WebSocket \(op) frame has \(n) payload bytes \(place); control frames carry at most 125"
        case .frameTooLarge(let n, let limit):
            return "WebSocket frame of \(n) payload bytes \(place) exceeds the limit of \(limit) bytes"
        case .continuationWithoutMessage:
            return "WebSocket continuation frame \(place) with no fragmented message in progress"
        case .messageStartedInsideMessage:
            return "WebSocket data frame \(place) starts a new message before the fragmented one ended"
        case .closePayloadOfOneByte:
            return "WebSocket close frame \(place) has a 1-byte payload; a status code takes 2"
        case .invalidCloseCode(let code):
            return "WebSocket close code \(code) \(place) may not be sent on the wire"
        case .closeReasonNotUTF8:
            return "WebSocket close reason \(place) is not valid UTF-8"
        }
    }
}

/// Incremental frame decoder. Feed it bytes as they arrive, in any pieces; it returns one event
/// per call. Data payloads are delivered as they arrive (never gathered into a message), unmasked
/// in place in the caller's buffer; only control frames (at most 125 bytes) and frame headers
/// (at most 14 bytes) are copied, into fixed buffers.
public final class WebSocketFrameDecoder {
    /// The service's frame limit: 2 × (65,536 + 2).
    public static let defaultMaximumFramePayload = 131_076

    public let role: WebSocketRole
    public let maximumFramePayload: Int

    private enum State {
        case header
        case payload(remaining: Int)
        case control(WebSocketOpcode, length: Int, filled: Int)
        /// A close frame was received, or an error was found: nothing more is decoded.
        case finished
    }

    private var state = State.header
    private let headerBytes: UnsafeMutableRawPointer
    private var headerFilled = 0
    private let controlBytes: UnsafeMutableRawPointer
    private var mask: WebSocketMaskingKey? = nil
    private var maskOffset = 0
    private var fin = false
    private var inFragmentedMessage = false
    /// Bytes consumed so far, for error offsets.
    public private(set) var streamOffset: UInt64 = 0
    private var frameStart: UInt64 = 0

    public init(role: WebSocketRole, maximumFramePayload: Int = WebSocketFrameDecoder.defaultMaximumFramePayload) {
        self.role = role
        self.maximumFramePayload = maximumFramePayload
        headerBytes = UnsafeMutableRawPointer.allocate(byteCount: 14, alignment: 8)
        controlBytes = UnsafeMutableRawPointer.allocate(byteCount: 125, alignment: 8)
    }

    deinit {
        headerBytes.deallocate()
        controlBytes.deallocate()
    }

    /// True once a close frame has been decoded or an error was thrown.
    public var isFinished: Bool {
        if case .finished = state { return true }
        return false
    }

    /// Decodes the next event from the front of `input`, consuming the bytes it used. Returns nil
    /// when `input` is used up without completing an event. After a close frame or an error, the
    /// rest of the input is left unconsumed and nil is returned.
    public func next(_ input: inout UnsafeMutableRawBufferPointer) throws(WebSocketProtocolError) -> WebSocketEvent? {
        while true {
            switch state {
            case .finished:
                return nil

            case .header:
                if input.isEmpty { return nil }
                if let event = try readHeader(&input) { return event }

            case .payload(let remaining):
                if input.isEmpty { return nil }
                let n = min(remaining, input.count)
                let chunk = UnsafeMutableRawBufferPointer(rebasing: input[0..<n])
                if let key = mask {
                    key.apply(to: chunk, offset: maskOffset)
                    maskOffset = (maskOffset + n) & 3
                }
                advance(&input, by: n)
                let left = remaining - n
                state = left == 0 ? .header : .payload(remaining: left)
                return .binary(chunk, isMessageEnd: left == 0 && fin)

            case .control(let opcode, let length, let filled):
                let n = min(length - filled, input.count)
                if n > 0 {
                    (controlBytes + filled).copyMemory(from: input.baseAddress!, byteCount: n)
                    advance(&input, by: n)
                }
                if filled + n < length {
                    state = .control(opcode, length: length, filled: filled + n)
                    return nil
                }
                state = .header
                return try controlEvent(opcode, length: length)
            }
        }
    }

    private func advance(_ input: inout UnsafeMutableRawBufferPointer, by n: Int) {
        input = UnsafeMutableRawBufferPointer(rebasing: input[n...])
        streamOffset &+= UInt64(n)
    }

    private func fail(_ reason: WebSocketProtocolError.Reason) -> WebSocketProtocolError {
        state = .finished
        return WebSocketProtocolError(reason, offset: frameStart)
    }

    /// Gathers header bytes; returns an event only for empty frames, which have no payload step.
    private func readHeader(_ input: inout UnsafeMutableRawBufferPointer) throws(WebSocketProtocolError) -> WebSocketEvent? {
        if headerFilled == 0 { frameStart = streamOffset }
        // The first two bytes tell how long the header is.
        var needed = 2
        if headerFilled >= 2 { needed = headerLength() }
        while headerFilled < needed {
            guard !input.isEmpty else { return nil }
            let n = min(needed - headerFilled, input.count)
            (headerBytes + headerFilled).copyMemory(from: input.baseAddress!, byteCount: n)
            headerFilled += n
            advance(&input, by: n)
            if headerFilled == 2 {
                try checkFirstTwoBytes()
                needed = headerLength()
            }
        }
        headerFilled = 0
        return try startFrame()
    }

    private func byte(_ i: Int) -> UInt8 { headerBytes.load(fromByteOffset: i, as: UInt8.self) }

    private func headerLength() -> Int {
        let b1 = byte(1)
        var n = 2
        switch b1 & 0x7F {
        case 126: n += 2
        case 127: n += 8
        default: break
        }
        if b1 & 0x80 != 0 { n += 4 }
        return n
    }

    /// Checks what can be checked before the rest of the header arrives, so that garbage is
    /// rejected at once rather than after waiting for more bytes.
    private func checkFirstTwoBytes() throws(WebSocketProtocolError) {
        let b0 = byte(0), b1 = byte(1)
        if b0 & 0x70 != 0 { throw fail(.reservedBitsSet(b0 & 0x70)) }
        let opcode = WebSocketOpcode(rawValue: b0 & 0x0F)
        if !opcode.isDefined { throw fail(.reservedOpcode(opcode.rawValue)) }
        if opcode == .text { throw fail(.textFrame) }
        let masked = b1 & 0x80 != 0
        if role == .server && !masked { throw fail(.unmaskedClientFrame) }
        if role == .client && masked { throw fail(.maskedServerFrame) }
        if opcode.isControl {
            if b0 & 0x80 == 0 { throw fail(.fragmentedControlFrame(opcode)) }
            if b1 & 0x7F > 125 { throw fail(.controlFrameTooLong(opcode, Int(b1 & 0x7F))) }
        } else if opcode == .continuation {
            if !inFragmentedMessage { throw fail(.continuationWithoutMessage) }
        } else if inFragmentedMessage {
            throw fail(.messageStartedInsideMessage)
        }
    }

    private func startFrame() throws(WebSocketProtocolError) -> WebSocketEvent? {
        let b0 = byte(0), b1 = byte(1)
        let opcode = WebSocketOpcode(rawValue: b0 & 0x0F)
        var length = UInt64(b1 & 0x7F)
        var at = 2
        if length == 126 {
            length = UInt64(byte(2)) << 8 | UInt64(byte(3))
            at = 4
        } else if length == 127 {
            length = 0
            for i in 2..<10 { length = length << 8 | UInt64(byte(i)) }
            at = 10
        }
        if length > UInt64(maximumFramePayload) { throw fail(.frameTooLarge(length, limit: maximumFramePayload)) }
        if b1 & 0x80 != 0 {
            mask = WebSocketMaskingKey(byte(at), byte(at + 1), byte(at + 2), byte(at + 3))
        } else {
            mask = nil
        }
        maskOffset = 0
        let count = Int(length)
        if opcode.isControl {
            if count == 0 { return try controlEvent(opcode, length: 0) }
            state = .control(opcode, length: count, filled: 0)
            return nil
        }
        fin = b0 & 0x80 != 0
        inFragmentedMessage = !fin
        if count == 0 {
            return .binary(UnsafeMutableRawBufferPointer(start: nil, count: 0), isMessageEnd: fin)
        }
        state = .payload(remaining: count)
        return nil
    }

    private func controlEvent(_ opcode: WebSocketOpcode, length: Int) throws(WebSocketProtocolError) -> WebSocketEvent {
        let payload = UnsafeMutableRawBufferPointer(start: controlBytes, count: length)
        mask?.apply(to: payload)
        let view = UnsafeRawBufferPointer(payload)
        switch opcode {
        case .ping:
            return .ping(view)
        case .pong:
            return .pong(view)
        default:
            if length == 0 {
                state = .finished
                return .close(code: nil, reason: view)
            }
            if length == 1 { throw fail(.closePayloadOfOneByte) }
            let code = UInt16(view[0]) << 8 | UInt16(view[1])
            if !WebSocketCloseCode.isValidOnWire(code) { throw fail(.invalidCloseCode(code)) }
            let reason = UnsafeRawBufferPointer(rebasing: view[2...])
            if !isValidUTF8(reason) { throw fail(.closeReasonNotUTF8) }
            state = .finished
            return .close(code: code, reason: reason)
        }
    }
}

/// Writes frame headers, in front of a payload already in place or into a fresh array.
public enum WebSocketFrameEncoder {
    /// The longest header: 2 bytes, an 8-byte length and a 4-byte masking key.
    public static let maximumHeaderLength = 14

    public static func headerLength(payloadLength: Int, masked: Bool) -> Int {
        var n = 2
        if payloadLength > 65_535 { n += 8 } else if payloadLength > 125 { n += 2 }
        if masked { n += 4 }
        return n
    }

    /// Writes a frame header that ends exactly at `end` (where the payload starts). Returns the
    /// header's length. The payload itself is not touched: mask it with `maskingKey.apply`.
    @discardableResult
    public static func writeHeader(
        opcode: WebSocketOpcode, fin: Bool = true, payloadLength: Int,
        maskingKey: WebSocketMaskingKey?, endingAt end: UnsafeMutableRawPointer
    ) -> Int {
        let length = headerLength(payloadLength: payloadLength, masked: maskingKey != nil)
        let p = end - length
        p.storeBytes(of: (fin ? 0x80 : 0) | opcode.rawValue, as: UInt8.self)
        let maskBit: UInt8 = maskingKey != nil ? 0x80 : 0
        var at = 2
        if payloadLength > 65_535 {
            p.storeBytes(of: maskBit | 127, toByteOffset: 1, as: UInt8.self)
            let n = UInt64(payloadLength)
            for i in 0..<8 {
                p.storeBytes(of: UInt8(truncatingIfNeeded: n >> (8 * UInt64(7 - i))), toByteOffset: 2 + i, as: UInt8.self)
            }
            at = 10
        } else if payloadLength > 125 {
            p.storeBytes(of: maskBit | 126, toByteOffset: 1, as: UInt8.self)
            p.storeBytes(of: UInt8(truncatingIfNeeded: payloadLength >> 8), toByteOffset: 2, as: UInt8.self)
            p.storeBytes(of: UInt8(truncatingIfNeeded: payloadLength), toByteOffset: 3, as: UInt8.self)
            at = 4
        } else {
            p.storeBytes(of: maskBit | UInt8(payloadLength), toByteOffset: 1, as: UInt8.self)
        }
        if let key = maskingKey {
            p.storeBytes(of: key.b0, toByteOffset: at, as: UInt8.self)
            p.storeBytes(of: key.b1, toByteOffset: at + 1, as: UInt8.self)
            p.storeBytes(of: key.b2, toByteOffset: at + 2, as: UInt8.self)
            p.storeBytes(of: key.b3, toByteOffset: at + 3, as: UInt8.self)
        }
        return length
    }

    /// A whole frame (header and payload, masked when a key is given) in a new array. For control
    /// frames and tests; data frames are built in place.
    public static func frame(
        opcode: WebSocketOpcode, fin: Bool = true, payload: UnsafeRawBufferPointer, maskingKey: WebSocketMaskingKey?
    ) -> [UInt8] {
        let header = headerLength(payloadLength: payload.count, masked: maskingKey != nil)
        var out = [UInt8](repeating: 0, count: header + payload.count)
        out.withUnsafeMutableBytes { buffer in
            let base = buffer.baseAddress!
            writeHeader(opcode: opcode, fin: fin, payloadLength: payload.count, maskingKey: maskingKey, endingAt: base + header)
            if let source = payload.baseAddress, payload.count > 0 {
                (base + header).copyMemory(from: source, byteCount: payload.count)
                maskingKey?.apply(to: UnsafeMutableRawBufferPointer(rebasing: buffer[header...]))
            }
        }
        return out
    }

    public static func frame(
        opcode: WebSocketOpcode, fin: Bool = true, payload: [UInt8], maskingKey: WebSocketMaskingKey?
    ) -> [UInt8] {
        payload.withUnsafeBytes { frame(opcode: opcode, fin: fin, payload: $0, maskingKey: maskingKey) }
    }

    /// A close frame with a status code and a reason (truncated to fit the 125-byte limit on a
    /// Unicode scalar boundary, so it stays valid UTF-8).
    public static func closeFrame(code: UInt16, reason: String, maskingKey: WebSocketMaskingKey?) -> [UInt8] {
        var payload: [UInt8] = [UInt8(truncatingIfNeeded: code >> 8), UInt8(truncatingIfNeeded: code)]
        for scalar in reason.unicodeScalars {
            var encoded: [UInt8] = []
            for unit in String(scalar).utf8 { encoded.append(unit) }
            if payload.count + encoded.count > 125 { break }
            payload.append(contentsOf: encoded)
        }
        return frame(opcode: .close, payload: payload, maskingKey: maskingKey)
    }
}

/// Lowercase hexadecimal digits of `value`, without a prefix.
func hexDigits(_ value: UInt64) -> String {
    let digits: [UInt8] = Array("0123456789abcdef".utf8)
    if value == 0 { return "0" }
    var out: [UInt8] = []
    var v = value
    while v > 0 {
        out.append(digits[Int(v & 0xF)])
        v >>= 4
    }
    return String(decoding: out.reversed(), as: UTF8.self)
}
