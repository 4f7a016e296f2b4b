/// Tunnel framing: every message travels as a 2-byte big-endian length followed by that many bytes
/// of protobuf (docs/PROTOCOL.md §5). The framed byte stream is independent of WebSocket framing: one
/// WebSocket frame may carry several messages or a piece of one.
public enum TunnelFrame {
    /// Bytes of the length prefix.
    public static let prefixLength = 2
    /// The largest message a 2-byte prefix can describe.
    public static let maximumMessageLength = 65_535

    /// Writes `length` as the 2-byte prefix at `pointer`.
    public static func writePrefix(_ length: Int, at pointer: UnsafeMutableRawPointer) {
        precondition(length >= 0 && length <= maximumMessageLength, "tunnel message length out of range")
        pointer.storeBytes(of: UInt8(truncatingIfNeeded: length >> 8), as: UInt8.self)
        (pointer + 1).storeBytes(of: UInt8(truncatingIfNeeded: length), as: UInt8.self)
    }

    /// Bytes a framed message takes in front of its payload (prefix and protobuf head).
    public static func headLength(_ message: TunnelMessage, payloadLength: Int) -> Int {
        prefixLength + message.headLength(payloadLength: payloadLength)
    }

    /// Frames `message` in place around a payload of `payloadLength` bytes that is already at
    /// `payload`: writes the prefix and protobuf head into the bytes right in front of it and the
    /// protobuf tail right after it. The caller provides `headLength(...)` bytes of headroom and
    /// `message.tailLength` bytes of tailroom. Returns the number of head bytes written.
    public static func frameInPlace(
        _ message: TunnelMessage, payload: UnsafeMutableRawPointer, payloadLength: Int
    ) throws(TunnelEncodingError) -> Int {
        guard payloadLength <= TunnelMessage.maximumPayloadLength else {
            throw TunnelEncodingError.payloadTooLarge(payloadLength)
        }
        let head = message.headLength(payloadLength: payloadLength)
        let total = head + payloadLength + message.tailLength
        guard total <= maximumMessageLength else { throw TunnelEncodingError.messageTooLarge(total) }
        message.writeHead(payloadLength: payloadLength, endingAt: payload)
        message.writeTail(at: payload + payloadLength)
        writePrefix(total, at: payload - head - prefixLength)
        return head + prefixLength
    }

    /// Frames a whole message into a new array (prefix, then protobuf). For control messages and
    /// tests.
    public static func encode(_ message: TunnelMessage) throws(TunnelEncodingError) -> [UInt8] {
        let body = try message.encoded()
        var out = [UInt8](repeating: 0, count: prefixLength)
        out[0] = UInt8(truncatingIfNeeded: body.count >> 8)
        out[1] = UInt8(truncatingIfNeeded: body.count)
        out.append(contentsOf: body)
        return out
    }
}

/// Splits a byte stream into tunnel messages.
///
/// Complete messages inside one input chunk are returned as views into that chunk, without a copy.
/// Only a message that straddles two chunks is copied, into an accumulator bounded by the largest
/// possible message (65,535 bytes plus the prefix), so memory use is fixed whatever the input.
public final class TunnelFrameDecoder {
    private let accumulator: UnsafeMutableRawPointer
    private var accumulated = 0

    public init() {
        accumulator = UnsafeMutableRawPointer.allocate(
            byteCount: TunnelFrame.prefixLength + TunnelFrame.maximumMessageLength, alignment: 8)
    }

    deinit { accumulator.deallocate() }

    /// Bytes of an incomplete message held from earlier chunks.
    public var bufferedByteCount: Int { accumulated }

    /// Returns the protobuf bytes of the next complete message, consuming them (and their prefix)
    /// from the front of `input`; or nil once `input` is used up without completing one (its bytes
    /// are kept for the next call). The returned view is valid until the next call or until the
    /// input's storage changes, whichever comes first.
    public func next(_ input: inout UnsafeRawBufferPointer) -> UnsafeRawBufferPointer? {
        if accumulated == 0 {
            // Fast path: the whole message is in this chunk.
            if input.count >= TunnelFrame.prefixLength {
                let length = Int(input[0]) << 8 | Int(input[1])
                let end = TunnelFrame.prefixLength + length
                if input.count >= end {
                    let message = UnsafeRawBufferPointer(rebasing: input[TunnelFrame.prefixLength..<end])
                    input = UnsafeRawBufferPointer(rebasing: input[end...])
                    return message
                }
            }
            if input.isEmpty { return nil }
        }
        // Slow path: gather the prefix, then the body, in the accumulator.
        if accumulated < TunnelFrame.prefixLength {
            let n = min(TunnelFrame.prefixLength - accumulated, input.count)
            take(n, from: &input)
            if accumulated < TunnelFrame.prefixLength { return nil }
        }
        let length = Int(accumulator.load(as: UInt8.self)) << 8 | Int((accumulator + 1).load(as: UInt8.self))
        let end = TunnelFrame.prefixLength + length
        take(min(end - accumulated, input.count), from: &input)
        guard accumulated == end else { return nil }
        accumulated = 0
        return UnsafeRawBufferPointer(start: accumulator + TunnelFrame.prefixLength, count: length)
    }

    private func take(_ count: Int, from input: inout UnsafeRawBufferPointer) {
        guard count > 0, let source = input.baseAddress else { return }
        (accumulator + accumulated).copyMemory(from: source, byteCount: count)
        accumulated += count
        input = UnsafeRawBufferPointer(rebasing: input[count...])
    }

    /// Forgets a partial message (after a session reset or a reconnect).
    public func reset() { accumulated = 0 }
}
