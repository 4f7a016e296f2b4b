// How relayed bytes are cut into frames, per framing mode.
import Testing
@testable import TunnelService

/// Frames everything queued so far; returns the frame lengths.
private func drain(_ framing: inout OutboundFraming) -> [Int] {
    var out: [Int] = []
    while let n = framing.nextFrameLength() {
        framing.sent(n)
        out.append(n)
    }
    return out
}

@Suite("Outbound framing")
struct OutboundFramingTests {
    @Test func passthroughSendsEachSenderMessageAsOneFrame() {
        var framing = OutboundFraming(mode: .passthrough)
        framing.appended(10)
        framing.appended(20)
        // The sender's WebSocket message has not ended: nothing may go yet.
        #expect(framing.nextFrameLength() == nil)
        framing.closeGroup()
        framing.appended(5)
        framing.closeGroup()
        framing.closeGroup()  // an empty group is no frame
        #expect(drain(&framing) == [30, 5])
        #expect(framing.queued == 0)
    }

    @Test func passthroughGroupsNeverExceedTheFrameLimit() {
        var framing = OutboundFraming(mode: .passthrough)
        for _ in 0..<5 { framing.appended(65_537) }
        framing.closeGroup()
        let frames = drain(&framing)
        #expect(frames == [131_074, 131_074, 65_537])
        #expect(frames.allSatisfy { $0 <= OutboundFraming.maximumFrame })
    }

    @Test func coalesceFillsFramesToTheLimit() {
        var framing = OutboundFraming(mode: .coalesce)
        for _ in 0..<5 { framing.appended(65_537) }
        #expect(drain(&framing) == [131_076, 131_076, 65_533])
        framing.appended(7)
        #expect(drain(&framing) == [7])
    }

    @Test func splitIsRandomBoundedAndRepeatable() {
        func run(seed: UInt64) -> [Int] {
            var framing = OutboundFraming(mode: .split(seed: seed))
            var frames: [Int] = []
            for size in [1, 300, 65_537, 65_537, 65_537, 12, 40_000] {
                framing.appended(size)
                // Asking twice before sending gives the same cut (the TLS buffer may be full).
                if let n = framing.nextFrameLength() {
                    #expect(framing.nextFrameLength() == n)
                    framing.sent(n)
                    frames.append(n)
                }
            }
            frames += drain(&framing)
            return frames
        }
        let a = run(seed: 7)
        #expect(a == run(seed: 7))
        #expect(a != run(seed: 8))
        let total = 1 + 300 + 3 * 65_537 + 12 + 40_000
        #expect(a.reduce(0, +) == total)
        #expect(a.allSatisfy { $0 >= 1 && $0 <= OutboundFraming.maximumFrame })
        #expect(a.count > 7)
    }

    @Test func splitProducesTinyFramesSometimes() {
        var framing = OutboundFraming(mode: .split(seed: 1))
        framing.appended(1_000_000)
        let frames = drain(&framing)
        #expect(frames.contains { $0 <= 16 })
        #expect(frames.contains { $0 > 4096 })
    }
}
