/// A bounded FIFO of bytes in one fixed allocation whose capacity is a power of two.
///
/// The buffer never grows: when it is full the producer must stop (for a socket, `uv_read_stop`)
/// until the consumer frees space. Both sides see the buffer as at most two contiguous spans, which
/// is the shape libuv wants: `alloc_cb` hands out a writable span, `uv_write` takes the readable
/// spans as two `uv_buf_t`s.
///
/// Framed output is built in place with `reserve(headroom:tailroom:...)`: a payload (for example
/// bytes read from a local TCP socket) is written into the reserved area, then the headers that
/// depend on its length are written into the headroom right in front of it, and any trailer right
/// after it. The payload itself is never moved. Headroom that the header did not need (headers
/// have variable length) becomes a *gap*: bytes inside the buffer that are not part of the stream.
/// Gaps are remembered in a small bounded list and skipped by the reader, so readable spans never
/// include them.
public final class RingBuffer {
    /// Largest capacity accepted (1 GiB): a bound on configuration mistakes, not a practical size.
    public static let maximumCapacity = 1 << 30

    /// Total bytes of storage, a power of two.
    public let capacity: Int
    /// How many gaps may be outstanding at once; `reserve` fails while the list is full.
    public let maximumGaps: Int

    private let mask: Int
    private let storage: UnsafeMutableRawPointer
    /// Index of the first byte in use (readable data or a gap).
    private var readIndex = 0
    /// Bytes in use from `readIndex` on, counting gaps.
    private var used = 0
    /// Bytes inside the used region that belong to gaps.
    private var gapBytes = 0
    /// Gaps in stream order, as (start index, length); a ring of `maximumGaps` entries.
    private let gapStarts: UnsafeMutablePointer<Int>
    private let gapLengths: UnsafeMutablePointer<Int>
    private var gapHead = 0
    private var gapCount = 0

    /// Creates a buffer of at least `minimumCapacity` bytes, rounded up to a power of two.
    public init(minimumCapacity: Int, maximumGaps: Int = 64) throws(RingBufferError) {
        guard minimumCapacity > 0, minimumCapacity <= RingBuffer.maximumCapacity else {
            throw RingBufferError.invalidCapacity(minimumCapacity)
        }
        guard maximumGaps > 0 else { throw RingBufferError.invalidGapLimit(maximumGaps) }
        var size = 1
        while size < minimumCapacity { size <<= 1 }
        capacity = size
        mask = size - 1
        self.maximumGaps = maximumGaps
        storage = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 16)
        gapStarts = UnsafeMutablePointer<Int>.allocate(capacity: maximumGaps)
        gapLengths = UnsafeMutablePointer<Int>.allocate(capacity: maximumGaps)
    }

    deinit {
        storage.deallocate()
        gapStarts.deallocate()
        gapLengths.deallocate()
    }

    /// Bytes that can be read (gaps excluded).
    public var readableCount: Int { used - gapBytes }
    /// Bytes that can still be written.
    public var writableCount: Int { capacity - used }
    public var isEmpty: Bool { used == 0 }
    public var isFull: Bool { used == capacity }

    private var writeIndex: Int { (readIndex + used) & mask }

    // MARK: Reading

    /// The readable bytes up to the next gap, as at most two spans (the second is empty unless the
    /// data wraps around the end of the storage). After consuming them, ask again: bytes behind a
    /// gap become visible once the reader has reached it.
    public var readableSpans: (UnsafeMutableRawBufferPointer, UnsafeMutableRawBufferPointer) {
        let run = runLength
        let first = min(run, capacity - readIndex)
        let a = UnsafeMutableRawBufferPointer(start: storage + readIndex, count: first)
        let b = UnsafeMutableRawBufferPointer(start: storage, count: run - first)
        return (a, b)
    }

    /// Readable bytes before the next gap (or the end of the data).
    private var runLength: Int {
        if gapCount == 0 { return used }
        return (gapStarts[gapHead] - readIndex) & mask
    }

    /// Marks `count` readable bytes as consumed. `count` may span gaps; it must not exceed
    /// `readableCount`.
    public func consume(_ count: Int) {
        precondition(count >= 0 && count <= readableCount, "RingBuffer.consume past the readable bytes")
        var remaining = count
        while true {
            skipGapAtReadIndex()
            if remaining == 0 { break }
            let step = min(remaining, runLength)
            readIndex = (readIndex + step) & mask
            used -= step
            remaining -= step
        }
        if used == 0 { readIndex = 0 }
    }

    private func skipGapAtReadIndex() {
        while gapCount > 0 && gapStarts[gapHead] == readIndex {
            let length = gapLengths[gapHead]
            readIndex = (readIndex + length) & mask
            used -= length
            gapBytes -= length
            gapHead = (gapHead + 1) % maximumGaps
            gapCount -= 1
        }
        if used == 0 { readIndex = 0 }
    }

    /// Copies up to `destination.count` readable bytes out and consumes them. Returns the count.
    /// For tests and slow paths; the hot path works on `readableSpans` directly.
    public func read(into destination: UnsafeMutableRawBufferPointer) -> Int {
        var copied = 0
        while copied < destination.count && readableCount > 0 {
            let (a, b) = readableSpans
            for span in [a, b] where copied < destination.count && span.count > 0 {
                let n = min(span.count, destination.count - copied)
                (destination.baseAddress! + copied).copyMemory(from: span.baseAddress!, byteCount: n)
                copied += n
                consume(n)
                if n < span.count { return copied }
            }
        }
        return copied
    }

    // MARK: Writing

    /// The free space as at most two spans, in stream order. Write into them, then `commit`.
    public var writableSpans: (UnsafeMutableRawBufferPointer, UnsafeMutableRawBufferPointer) {
        let free = capacity - used
        let start = writeIndex
        let first = min(free, capacity - start)
        let a = UnsafeMutableRawBufferPointer(start: storage + start, count: first)
        let b = UnsafeMutableRawBufferPointer(start: storage, count: free - first)
        return (a, b)
    }

    /// Makes `count` bytes written at the start of `writableSpans` readable.
    public func commit(_ count: Int) {
        precondition(count >= 0 && count <= writableCount, "RingBuffer.commit past the free space")
        used += count
    }

    /// Copies `bytes` in if they fit entirely; returns false (and writes nothing) otherwise.
    public func write(_ bytes: UnsafeRawBufferPointer) -> Bool {
        guard bytes.count <= writableCount else { return false }
        guard let source = bytes.baseAddress else { return true }
        let (a, _) = writableSpans
        let first = min(a.count, bytes.count)
        a.baseAddress!.copyMemory(from: source, byteCount: first)
        if bytes.count > first {
            storage.copyMemory(from: source + first, byteCount: bytes.count - first)
        }
        used += bytes.count
        return true
    }

    // MARK: Framed writing with headroom

    /// A contiguous area handed out by `reserve`: `payload` is where the payload goes; up to
    /// `headroom` bytes right in front of it and `tailroom` bytes right after its capacity are
    /// reserved for the header and trailer.
    public struct Reservation {
        /// Where the payload is written. Its count is the most payload that fits.
        public let payload: UnsafeMutableRawBufferPointer
        public let headroom: Int
        public let tailroom: Int
        /// Index where the reserved area starts (after any skipped end-of-storage bytes).
        fileprivate let areaStart: Int
        /// Bytes at the end of the storage skipped because the area did not fit there.
        fileprivate let skipped: Int
    }

    /// Reserves one contiguous area of `headroom + payload + tailroom` bytes, with a payload
    /// capacity of at least `minimumPayload` and at most `maximumPayload`. Returns nil when that
    /// much contiguous space (or a free gap slot) is not available now: the producer waits until
    /// the consumer frees space. If the space before the end of the storage is too small, the area
    /// starts at the beginning of the storage and the bytes skipped become a gap.
    public func reserve(headroom: Int, tailroom: Int, minimumPayload: Int = 1, maximumPayload: Int) -> Reservation? {
        precondition(headroom >= 0 && tailroom >= 0 && minimumPayload >= 0 && maximumPayload >= minimumPayload)
        let needed = headroom + minimumPayload + tailroom
        // Committing may record one gap (skipped bytes plus unused headroom, merged).
        guard used == 0 || gapCount < maximumGaps else { return nil }
        if used == 0 { readIndex = 0 }
        let start = writeIndex
        let free = capacity - used
        let untilEnd = capacity - start
        var areaStart = start
        var contiguous = min(free, untilEnd)
        var skipped = 0
        if contiguous < needed && free > untilEnd {
            // Not enough room before the end of the storage: start over at index 0.
            skipped = untilEnd
            areaStart = 0
            contiguous = free - untilEnd
        }
        guard contiguous >= needed else { return nil }
        let payloadCapacity = min(maximumPayload, contiguous - headroom - tailroom)
        let payload = UnsafeMutableRawBufferPointer(start: storage + areaStart + headroom, count: payloadCapacity)
        return Reservation(payload: payload, headroom: headroom, tailroom: tailroom, areaStart: areaStart, skipped: skipped)
    }

    /// Publishes a reserved area: `headerLength` bytes written right in front of the payload,
    /// `payloadLength` payload bytes, and `trailerLength` bytes written right after the payload.
    /// Nothing else may have been committed since `reserve` returned `reservation`.
    public func commit(_ reservation: Reservation, headerLength: Int, payloadLength: Int, trailerLength: Int = 0) {
        precondition(headerLength >= 0 && headerLength <= reservation.headroom, "header longer than the headroom")
        precondition(trailerLength >= 0 && trailerLength <= reservation.tailroom, "trailer longer than the tailroom")
        precondition(payloadLength >= 0 && payloadLength <= reservation.payload.count, "payload longer than reserved")
        let gapLength = reservation.skipped + reservation.headroom - headerLength
        if gapLength > 0 {
            if used == 0 {
                // Nothing to read in front of the frame: move the read position instead of
                // remembering a gap.
                readIndex = (reservation.areaStart + reservation.headroom - headerLength) & mask
            } else {
                let slot = (gapHead + gapCount) % maximumGaps
                gapStarts[slot] = writeIndex
                gapLengths[slot] = gapLength
                gapCount += 1
                gapBytes += gapLength
                used += gapLength
            }
        }
        used += headerLength + payloadLength + trailerLength
    }

    /// Forgets everything buffered.
    public func removeAll() {
        readIndex = 0
        used = 0
        gapBytes = 0
        gapHead = 0
        gapCount = 0
    }
}

public enum RingBufferError: Error, Equatable, CustomStringConvertible {
    case invalidCapacity(Int)
    case invalidGapLimit(Int)

    public var description: String {
        switch self {
        case .invalidCapacity(let n):
            return "ring buffer capacity \(n) is out of range: use 1 to \(RingBuffer.maximumCapacity) bytes"
        case .invalidGapLimit(let n):
            return "ring buffer gap limit \(n) must be at least 1"
        }
    }
}
