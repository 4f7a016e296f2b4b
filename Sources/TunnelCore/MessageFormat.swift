/// Message format of a stream, decided by the peer's STREAM_START (docs/PROTOCOL.md §11).
public enum MessageFormat: Equatable, CustomStringConvertible {
    /// No serviceId, no connectionId.
    case v1
    /// serviceId, no connectionId.
    case v2
    /// serviceId and connectionId.
    case v3

    public var description: String {
        switch self {
        case .v1: return "V1"
        case .v2: return "V2"
        case .v3: return "V3"
        }
    }
}
