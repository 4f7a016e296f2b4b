import CLibUV
import TunnelCore

/// A socket address (IPv4, IPv6) in a fixed-size buffer, so it can be stored and passed to libuv.
public struct SocketAddress: CustomStringConvertible {
    var storage = sockaddr_storage()

    public init?(ip: String, port: UInt16) {
        let ok = withUnsafeMutablePointer(to: &storage) { pointer -> Bool in
            let raw = UnsafeMutableRawPointer(pointer)
            if withCString(ip, { uv_ip4_addr($0, Int32(port), raw.assumingMemoryBound(to: sockaddr_in.self)) }) == 0 { return true }
            return withCString(ip, { uv_ip6_addr($0, Int32(port), raw.assumingMemoryBound(to: sockaddr_in6.self)) }) == 0
        }
        if !ok { return nil }
    }

    init(copying address: UnsafePointer<sockaddr>, length: Int) {
        withUnsafeMutableBytes(of: &storage) { out in
            out.copyMemory(from: UnsafeRawBufferPointer(start: address, count: min(length, out.count)))
        }
    }

    func withSockaddr<R>(_ body: (UnsafePointer<sockaddr>) -> R) -> R {
        withUnsafePointer(to: storage) { body(UnsafeRawPointer($0).assumingMemoryBound(to: sockaddr.self)) }
    }

    public var port: UInt16 {
        withSockaddr { p in
            let family = Int32(p.pointee.sa_family)
            if family == AF_INET6 {
                return UInt16(bigEndian: UnsafeRawPointer(p).assumingMemoryBound(to: sockaddr_in6.self).pointee.sin6_port)
            }
            return UInt16(bigEndian: UnsafeRawPointer(p).assumingMemoryBound(to: sockaddr_in.self).pointee.sin_port)
        }
    }

    /// 127.0.0.0/8, ::1, or an IPv4-mapped loopback address.
    public var isLoopback: Bool {
        let text = description
        return text.hasBytePrefix("127.") || text.hasBytePrefix("[::1]") || text.hasBytePrefix("[::ffff:127.")
    }

    public var description: String {
        var text = [CChar](repeating: 0, count: 64)
        let family = withSockaddr { Int32($0.pointee.sa_family) }
        withSockaddr { p in
            text.withUnsafeMutableBufferPointer { out in
                if family == AF_INET6 {
                    _ = uv_ip6_name(UnsafeRawPointer(p).assumingMemoryBound(to: sockaddr_in6.self), out.baseAddress, out.count)
                } else {
                    _ = uv_ip4_name(UnsafeRawPointer(p).assumingMemoryBound(to: sockaddr_in.self), out.baseAddress, out.count)
                }
            }
        }
        let host = text.withUnsafeBufferPointer { cString($0.baseAddress) }
        return family == AF_INET6 ? "[\(host)]:\(port)" : "\(host):\(port)"
    }
}

extension SocketAddress {
    mutating func setPort(_ port: UInt16) {
        withUnsafeMutablePointer(to: &storage) { p in
            let raw = UnsafeMutableRawPointer(p)
            if Int32(raw.assumingMemoryBound(to: sockaddr.self).pointee.sa_family) == AF_INET6 {
                raw.assumingMemoryBound(to: sockaddr_in6.self).pointee.sin6_port = port.bigEndian
            } else {
                raw.assumingMemoryBound(to: sockaddr_in.self).pointee.sin_port = port.bigEndian
            }
        }
    }
}

extension SocketAddress {
    /// The socket address of `ip` and `port`.
    init(_ ip: IPAddress, port: UInt16) {
        withUnsafeMutableBytes(of: &storage) { raw in
            if ip.family == .v4 {
                var a = sockaddr_in()
                a.sin_family = sa_family_t(AF_INET)
                a.sin_port = port.bigEndian
                withUnsafeMutableBytes(of: &a.sin_addr) { $0.copyBytes(from: ip.bytes) }
                raw.storeBytes(of: a, as: sockaddr_in.self)
            } else {
                var a = sockaddr_in6()
                a.sin6_family = sa_family_t(AF_INET6)
                a.sin6_port = port.bigEndian
                withUnsafeMutableBytes(of: &a.sin6_addr) { $0.copyBytes(from: ip.bytes) }
                raw.storeBytes(of: a, as: sockaddr_in6.self)
            }
        }
    }

    var isIPv6: Bool { withSockaddr { Int32($0.pointee.sa_family) == AF_INET6 } }

    /// Same family, address and port (what a reply's source must be).
    func isSameEndpoint(as other: SocketAddress) -> Bool {
        guard isIPv6 == other.isIPv6, port == other.port else { return false }
        return addressBytes == other.addressBytes
    }

    /// The address alone, in network order.
    var addressBytes: [UInt8] {
        withSockaddr { p in
            let raw = UnsafeRawPointer(p)
            if Int32(p.pointee.sa_family) == AF_INET6 {
                var a = raw.assumingMemoryBound(to: sockaddr_in6.self).pointee.sin6_addr
                return withUnsafeBytes(of: &a) { Array($0) }
            }
            var a = raw.assumingMemoryBound(to: sockaddr_in.self).pointee.sin_addr
            return withUnsafeBytes(of: &a) { Array($0) }
        }
    }
}
