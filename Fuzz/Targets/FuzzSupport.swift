/// Shared by every fuzz target (compiled into each target's executable, see Fuzz/fuzz.py).
///
/// The targets check properties, not only the absence of crashes: a broken property stops the
/// run through `require`, which libFuzzer reports as a crash with the message and the stack.

/// Stops the run when a property of the code under test does not hold.
func require(_ condition: Bool, _ message: @autoclosure () -> String,
             file: StaticString = #file, line: UInt = #line) {
    if !condition { fatalError("fuzz property broken: \(message())", file: file, line: line) }
}

/// The input as an array (libFuzzer may pass a null pointer for the empty input).
func inputBytes(_ data: UnsafePointer<UInt8>?, _ size: Int) -> [UInt8] {
    guard let data, size > 0 else { return [] }
    return Array(UnsafeBufferPointer(start: data, count: size))
}

/// FNV-1a of the input: the seed of every choice a target makes without spending input bytes on
/// it (piece lengths, limits), so that each input always runs the same way.
func fnv1a(_ bytes: [UInt8]) -> UInt64 {
    var h: UInt64 = 0xCBF2_9CE4_8422_2325
    for b in bytes {
        h ^= UInt64(b)
        h = h &* 0x0000_0100_0000_01B3
    }
    return h
}

/// xorshift64*: small, deterministic, good enough to pick piece lengths.
struct SplitRandom {
    private var state: UInt64

    init(seed: UInt64) { state = seed == 0 ? 0x9E37_79B9_7F4A_7C15 : seed }

    mutating func next() -> UInt64 {
        state ^= state >> 12
        state ^= state << 25
        state ^= state >> 27
        return state &* 0x2545_F491_4F6C_DD1D
    }

    mutating func below(_ bound: Int) -> Int { bound <= 1 ? 0 : Int(next() % UInt64(bound)) }
}

/// The ways a streaming decoder is fed the same input, as lists of piece lengths: all at once,
/// one byte per call (up to `bytewiseLimit` bytes of input, for speed), and pieces of mixed
/// lengths drawn from the input's hash. A streaming decoder must give the same result for each.
func splitPlans(count: Int, seed: UInt64, bytewiseLimit: Int = 1024) -> [[Int]] {
    guard count > 0 else { return [[]] }
    var plans: [[Int]] = [[count]]
    if count <= bytewiseLimit { plans.append([Int](repeating: 1, count: count)) }
    var random = SplitRandom(seed: seed)
    var mixed: [Int] = []
    var left = count
    while left > 0 {
        let scale = [3, 17, 300][random.below(3)]
        let n = min(left, 1 + random.below(scale))
        mixed.append(n)
        left -= n
    }
    plans.append(mixed)
    return plans
}

/// Calls `body` once per piece of `bytes` cut as `plan` says, each piece in its own allocation of
/// exactly its length, so that AddressSanitizer reports any read past the end of a piece. `body`
/// returns false to stop early.
func forEachPiece(_ bytes: [UInt8], _ plan: [Int], _ body: (UnsafeMutableRawBufferPointer) -> Bool) {
    var start = 0
    for n in plan {
        let piece = UnsafeMutableRawBufferPointer.allocate(byteCount: n, alignment: 1)
        defer { piece.deallocate() }
        bytes[start..<(start + n)].withUnsafeBytes { piece.copyMemory(from: $0) }
        start += n
        if !body(piece) { return }
    }
}

/// How many bytes a decoder consumed between `before` and `after`, after checking that `after` is
/// what is left of `before` once a prefix is taken away: same end, start not earlier.
func consumedPrefix(_ before: UnsafeRawBufferPointer, _ after: UnsafeRawBufferPointer) -> Int {
    require(after.count <= before.count, "the input grew from \(before.count) to \(after.count) bytes")
    let used = before.count - after.count
    if after.count > 0 || before.count > 0 {
        let expected = before.baseAddress.map { $0 + used }
        require(after.count == 0 || after.baseAddress == expected,
                "the remaining input is not the suffix of what was given (consumed \(used) of \(before.count))")
    }
    return used
}

/// Whether `view` lies inside `region` (an empty view anywhere counts).
func isInside(_ view: UnsafeRawBufferPointer, _ region: UnsafeRawBufferPointer) -> Bool {
    if view.count == 0 { return true }
    guard let v = view.baseAddress, let r = region.baseAddress else { return false }
    return v >= r && v + view.count <= r + region.count
}
