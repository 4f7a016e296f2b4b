/// Where a service's connections go.
public enum Endpoint: Equatable, CustomStringConvertible {
    case tcp(host: String, port: UInt16)
    case unix(path: String)

    public var description: String {
        switch self {
        case .tcp(let host, let port):
            var h = host
            for b in host.utf8 where b == 0x3A { h = "[\(host)]"; break }
            return "\(h):\(port)"
        case .unix(let path):
            return path
        }
    }
}
