// Helpers shared by the TunnelCore tests: byte vectors from hex text, and the ways of cutting an
// input into pieces that drip-feed tests use.
import TunnelCore

/// Bytes from hex text; spaces are ignored ("08 02 10 01").
func bytes(_ hex: String) -> [UInt8] {
    let digits = Array(hex.utf8).filter { $0 != 0x20 && $0 != 0x0A }
    precondition(digits.count % 2 == 0, "odd number of hex digits in test vector")
    func nibble(_ c: UInt8) -> UInt8 {
        switch c {
        case 0x30...0x39: return c - 0x30
        case 0x61...0x66: return c - 0x61 + 10
        case 0x41...0x46: return c - 0x41 + 10
        default: preconditionFailure("not a hex digit in test vector")
        }
    }
    return stride(from: 0, to: digits.count, by: 2).map { nibble(digits[$0]) << 4 | nibble(digits[$0 + 1]) }
}

/// Lowercase hex of bytes, for readable failure messages.
func hex<C: Collection>(_ data: C) -> String where C.Element == UInt8 {
    data.map { b in
        let s = String(b, radix: 16)
        return b < 16 ? "0" + s : s
    }.joined()
}

/// Ways to cut `count` bytes into consecutive pieces, as lists of piece lengths: whole; every
/// single cut point; every pair of cut points (when `count` <= `pairLimit`); one byte at a time.
func splits(of count: Int, pairLimit: Int = 64) -> [[Int]] {
    var result: [[Int]] = [[count]]
    if count >= 1 {
        for a in 1..<max(count, 1) { result.append([a, count - a]) }
    }
    if count <= pairLimit && count >= 3 {
        for a in 1..<(count - 1) {
            for b in (a + 1)..<count { result.append([a, b - a, count - b]) }
        }
    }
    result.append(Array(repeating: 1, count: count))
    return result
}

/// Cuts `data` into pieces of the given lengths.
func cut(_ data: [UInt8], _ lengths: [Int]) -> [[UInt8]] {
    var out: [[UInt8]] = []
    var at = 0
    for n in lengths {
        out.append(Array(data[at..<(at + n)]))
        at += n
    }
    return out
}

/// Ending a stream or a session walks a dictionary, whose order changes from run to run (the
/// hash seed is per process); the order of consecutive closes, or of consecutive resets, means
/// nothing, so each such run is compared sorted. `local` tells whether an action is a close
/// (kind 0) or a reset (kind 1) of a local connection, and of which; `make` rebuilds it.
func sortingLocalRuns<Act>(_ acts: [Act], local: (Act) -> (kind: Int, id: UInt32)?, make: (Int, UInt32) -> Act) -> [Act] {
    var out: [Act] = []
    var run: [UInt32] = []
    var runKind = -1
    func flush() {
        out += run.sorted().map { make(runKind, $0) }
        run = []
    }
    for act in acts {
        if let (kind, id) = local(act) {
            if kind != runKind { flush(); runKind = kind }
            run.append(id)
        } else {
            flush()
            runKind = -1
            out.append(act)
        }
    }
    flush()
    return out
}
