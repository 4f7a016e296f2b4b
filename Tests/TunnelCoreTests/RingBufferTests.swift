import Testing
@testable import TunnelCore

extension RingBuffer {
    /// Everything readable, copied out without consuming (walks spans and gaps on a copy of
    /// the state by reading and re-checking counts).
    func drainAll() -> [UInt8] {
        var out = [UInt8](repeating: 0, count: readableCount)
        let n = out.withUnsafeMutableBytes { read(into: $0) }
        return Array(out[0..<n])
    }

    func append(_ data: [UInt8]) -> Bool { data.withUnsafeBytes { write($0) } }
}

@Suite("Ring buffer")
struct RingBufferTests {
    @Test func capacityIsRoundedUpToAPowerOfTwo() throws {
        #expect(try RingBuffer(minimumCapacity: 1).capacity == 1)
        #expect(try RingBuffer(minimumCapacity: 1000).capacity == 1024)
        #expect(try RingBuffer(minimumCapacity: 131_076).capacity == 262_144)
        #expect(throws: RingBufferError.invalidCapacity(0)) { try RingBuffer(minimumCapacity: 0) }
        #expect(throws: RingBufferError.invalidCapacity((1 << 30) + 1)) { try RingBuffer(minimumCapacity: (1 << 30) + 1) }
        #expect(throws: RingBufferError.invalidGapLimit(0)) { try RingBuffer(minimumCapacity: 8, maximumGaps: 0) }
    }

    @Test func spansWrapAroundTheEnd() throws {
        let ring = try RingBuffer(minimumCapacity: 16)
        #expect(ring.append(Array(0..<10)))
        #expect(ring.drainAll().count == 10)
        // Empty again: indices go back to 0, so a 16-byte write is one span.
        #expect(ring.writableSpans.0.count == 16)
        #expect(ring.append(Array(0..<12)))
        ring.consume(8)
        #expect(ring.append(Array(100..<110)))
        let (a, b) = ring.readableSpans
        #expect(Array(a) == [8, 9, 10, 11, 100, 101, 102, 103])
        #expect(Array(b) == [104, 105, 106, 107, 108, 109])
        let (wa, wb) = ring.writableSpans
        #expect(wa.count == 2 && wb.count == 0)
        #expect(ring.writableCount == 2)
    }

    @Test func fullBufferRefusesWritesWithoutLosingData() throws {
        let ring = try RingBuffer(minimumCapacity: 8)
        #expect(ring.append(Array(1...8)))
        #expect(ring.isFull)
        #expect(!ring.append([9]))
        #expect(ring.drainAll() == Array(1...8))
    }

    @Test func commitThroughWritableSpans() throws {
        let ring = try RingBuffer(minimumCapacity: 8)
        #expect(ring.append([1, 2, 3, 4, 5, 6]))
        ring.consume(5)
        let (a, b) = ring.writableSpans
        #expect(a.count == 2 && b.count == 5)
        a.copyBytes(from: [7, 8])
        b.copyBytes(from: [9, 10, 11])
        ring.commit(5)
        #expect(ring.drainAll() == [6, 7, 8, 9, 10, 11])
    }

    @Test func headroomOnAnEmptyBufferLeavesNoGap() throws {
        let ring = try RingBuffer(minimumCapacity: 64)
        let r = try #require(ring.reserve(headroom: 10, tailroom: 4, maximumPayload: 100))
        #expect(r.payload.count == 50)
        r.payload.copyBytes(from: [0xAA, 0xBB, 0xCC])
        // A 3-byte header right in front of the payload, a 1-byte trailer right after.
        (r.payload.baseAddress! - 3).copyMemory(from: [UInt8]([1, 2, 3]), byteCount: 3)
        (r.payload.baseAddress! + 3).storeBytes(of: 0xEE, as: UInt8.self)
        ring.commit(r, headerLength: 3, payloadLength: 3, trailerLength: 1)
        #expect(ring.readableCount == 7)
        #expect(Array(ring.readableSpans.0) == [1, 2, 3, 0xAA, 0xBB, 0xCC, 0xEE])
    }

    @Test func unusedHeadroomBehindDataBecomesAGapTheReaderSkips() throws {
        let ring = try RingBuffer(minimumCapacity: 64)
        #expect(ring.append([10, 11]))
        let r = try #require(ring.reserve(headroom: 8, tailroom: 0, maximumPayload: 4))
        r.payload.copyBytes(from: [0xAA, 0xBB])
        (r.payload.baseAddress! - 1).storeBytes(of: 0x99, as: UInt8.self)
        ring.commit(r, headerLength: 1, payloadLength: 2)
        #expect(ring.readableCount == 5)
        // The first run stops at the gap; after consuming it the frame becomes visible.
        #expect(Array(ring.readableSpans.0) == [10, 11])
        ring.consume(2)
        #expect(Array(ring.readableSpans.0) == [0x99, 0xAA, 0xBB])
        ring.consume(3)
        #expect(ring.isEmpty)
    }

    @Test func reservationThatDoesNotFitAtTheEndStartsAtZero() throws {
        let ring = try RingBuffer(minimumCapacity: 32)
        #expect(ring.append(Array(0..<28)))
        ring.consume(20)  // 8 bytes readable at 20..<28; 4 free at the end, 20 at the start
        let r = try #require(ring.reserve(headroom: 4, tailroom: 0, minimumPayload: 4, maximumPayload: 100))
        #expect(r.payload.count == 16)
        r.payload.copyBytes(from: [0xA0, 0xA1])
        (r.payload.baseAddress! - 2).copyMemory(from: [UInt8]([0xF0, 0xF1]), byteCount: 2)
        ring.commit(r, headerLength: 2, payloadLength: 2)
        #expect(ring.drainAll() == Array(20..<28) + [0xF0, 0xF1, 0xA0, 0xA1])
        #expect(ring.isEmpty)
    }

    @Test func reserveFailsWhenSpaceOrGapSlotsRunOut() throws {
        let ring = try RingBuffer(minimumCapacity: 64, maximumGaps: 2)
        #expect(ring.reserve(headroom: 60, tailroom: 10, maximumPayload: 1) == nil)
        #expect(ring.append([1]))
        for _ in 0..<2 {
            let r = try #require(ring.reserve(headroom: 4, tailroom: 0, maximumPayload: 1))
            ring.commit(r, headerLength: 0, payloadLength: 1)
        }
        #expect(ring.reserve(headroom: 4, tailroom: 0, maximumPayload: 1) == nil, "gap list is full")
        ring.consume(1)
        #expect(ring.reserve(headroom: 4, tailroom: 0, maximumPayload: 1) != nil, "a gap slot was freed")
    }

    /// Random operations against a plain array as the reference queue: after every step the ring
    /// must hold exactly the model's bytes, in order.
    @Test(arguments: [1, 2, 3, 4, 5])
    func randomOperationsMatchAModelQueue(seed: UInt64) throws {
        var rng = SeededGenerator(seed: seed)
        let ring = try RingBuffer(minimumCapacity: 256, maximumGaps: 8)
        var model: [UInt8] = []
        var next: UInt8 = 0
        func fresh(_ n: Int) -> [UInt8] {
            (0..<n).map { _ in next &+= 1; return next }
        }
        for step in 0..<5000 {
            switch rng.next() % 4 {
            case 0:
                let data = fresh(Int(rng.next() % 80))
                if ring.append(data) { model += data } else { #expect(data.count > ring.writableCount) }
            case 1:
                let headroom = Int(rng.next() % 16), tailroom = Int(rng.next() % 8)
                guard let r = ring.reserve(headroom: headroom, tailroom: tailroom, maximumPayload: Int(rng.next() % 64) + 1) else { break }
                let header = fresh(Int(rng.next() % UInt64(headroom + 1)))
                let payload = fresh(Int(rng.next() % UInt64(r.payload.count + 1)))
                let trailer = fresh(Int(rng.next() % UInt64(tailroom + 1)))
                r.payload.copyBytes(from: payload)
                (r.payload.baseAddress! - header.count).copyMemory(from: header, byteCount: header.count)
                (r.payload.baseAddress! + payload.count).copyMemory(from: trailer, byteCount: trailer.count)
                ring.commit(r, headerLength: header.count, payloadLength: payload.count, trailerLength: trailer.count)
                model += header + payload + trailer
            default:
                let n = Int(rng.next() % UInt64(model.count + 1))
                var out = [UInt8](repeating: 0, count: n)
                let got = out.withUnsafeMutableBytes { ring.read(into: $0) }
                #expect(got == n)
                #expect(out == Array(model[0..<n]), "step \(step)")
                model.removeFirst(n)
            }
            #expect(ring.readableCount == model.count, "step \(step)")
            if ring.readableCount != model.count { return }
        }
        #expect(ring.drainAll() == model)
    }
}

/// SplitMix64, so that a failing seed reproduces.
struct SeededGenerator: RandomNumberGenerator {
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
