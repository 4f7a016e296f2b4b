/// Identifies one local TCP (or Unix socket) connection for the lifetime of a process.
public struct LocalConnectionID: Hashable, CustomStringConvertible {
    public let rawValue: UInt32
    public init(_ rawValue: UInt32) { self.rawValue = rawValue }
    public var description: String { "#\(rawValue)" }
}
