/// How the emulator cuts the tunnel byte stream it relays into WebSocket frames (docs/PROTOCOL.md §4,
/// §14.4). Tunnel messages always arrive intact and in order; only the frame boundaries differ,
/// which is what receivers must be indifferent to.
public enum FramingMode: Equatable, Sendable, CustomStringConvertible {
    /// The messages completed by each WebSocket message a sender sent go out together as one
    /// frame (closest to a service that relays what it got).
    case passthrough
    /// Everything queued goes out in frames as large as the 131,076-byte limit allows, cut at any
    /// byte: messages straddle frames, as when the service re-aggregates. What one read from the
    /// sender delivered is framed together, and while the receiver is slow the queue grows, so
    /// frames reach the limit.
    case coalesce
    /// Frames of random sizes (1 byte up to the limit), from a seeded generator so that a
    /// failing run can be repeated.
    case split(seed: UInt64)

    public var description: String {
        switch self {
        case .passthrough: return "passthrough"
        case .coalesce: return "coalesce"
        case .split(let seed): return "split (seed \(seed))"
        }
    }
}

/// Decides the length of each outgoing data frame over a connection's queue of relayed bytes.
/// It only counts; the bytes themselves live in the connection's ring buffer.
public struct OutboundFraming: Sendable {
    /// The service's frame payload limit.
    public static let maximumFrame = 131_076

    public let mode: FramingMode
    /// Bytes queued and not yet framed.
    public private(set) var queued = 0
    /// Passthrough: lengths of closed groups waiting to be sent, oldest first.
    private var groups: [Int] = []
    private var groupsHead = 0
    /// Passthrough: bytes of the group still being filled.
    public private(set) var openGroup = 0
    private var random: SplitMix64
    /// Split: the cut already chosen for the next frame, kept until that frame is sent so that
    /// asking again (after the TLS buffer was full) gives the same answer.
    private var pendingCut: Int? = nil

    public init(mode: FramingMode) {
        self.mode = mode
        if case .split(let seed) = mode { random = SplitMix64(seed: seed) } else { random = SplitMix64(seed: 0) }
    }

    /// Records `count` more bytes queued (one whole tunnel message, prefix included).
    public mutating func appended(_ count: Int) {
        queued += count
        guard mode == .passthrough else { return }
        // A group never outgrows one frame: a sender's WebSocket message may be fragmented into
        // any number of frames, and an unbounded group could never be sent.
        if openGroup + count > OutboundFraming.maximumFrame { closeGroup() }
        openGroup += count
    }

    /// Ends the current group (passthrough): the sender's WebSocket message ended, or a service
    /// message must not merge with what follows.
    public mutating func closeGroup() {
        guard mode == .passthrough, openGroup > 0 else { return }
        groups.append(openGroup)
        openGroup = 0
    }

    /// The payload length of the next frame to send, or nil when nothing may be sent yet.
    public mutating func nextFrameLength() -> Int? {
        guard queued > 0 else { return nil }
        switch mode {
        case .passthrough:
            return groupsHead < groups.count ? groups[groupsHead] : nil
        case .coalesce:
            return min(queued, OutboundFraming.maximumFrame)
        case .split:
            if let cut = pendingCut { return min(cut, queued) }
            let cut = randomCut(limit: min(queued, OutboundFraming.maximumFrame))
            pendingCut = cut
            return cut
        }
    }

    /// Records that a frame of `count` bytes (the length `nextFrameLength` gave) went out.
    public mutating func sent(_ count: Int) {
        precondition(count > 0 && count <= queued, "framed more bytes than were queued")
        queued -= count
        pendingCut = nil
        if mode == .passthrough {
            precondition(groupsHead < groups.count && groups[groupsHead] == count, "passthrough frame is not a whole group")
            groupsHead += 1
            // Compact now and then so the array does not grow with the connection's lifetime.
            if groupsHead >= 1024 && groupsHead * 2 >= groups.count {
                groups.removeFirst(groupsHead)
                groupsHead = 0
            }
        }
    }

    /// Cut sizes spread over three scales, so that runs contain 1-byte frames, frames that cut
    /// messages mid-header, and large frames carrying many messages.
    private mutating func randomCut(limit: Int) -> Int {
        let r = random.next()
        let scale: Int
        switch r % 4 {
        case 0: scale = 16
        case 1, 2: scale = 4096
        default: scale = OutboundFraming.maximumFrame
        }
        return 1 + Int((r >> 2) % UInt64(min(limit, scale)))
    }
}

/// A small, fast, seedable generator (Steele, Lea and Flood's SplitMix64): reproducible frame
/// cuts need determinism, not secrecy.
public struct SplitMix64: Sendable {
    private var state: UInt64

    public init(seed: UInt64) { state = seed }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
