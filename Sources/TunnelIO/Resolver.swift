import CLibUV
import TunnelCore

/// How `Resolver.resolve` turns host names into addresses.
public enum ResolverMode: Equatable, CustomStringConvertible {
    /// The C library's getaddrinfo on libuv's thread pool (nsswitch, NSS modules, its cache).
    case system
    /// Our own stub resolver on the loop: /etc/hosts, then DNS over UDP (TCP when truncated) to
    /// the nameservers of /etc/resolv.conf. Needs no NSS, so it works in a fully static binary.
    case builtin

    public var description: String { self == .system ? "system" : "builtin" }
}

/// Where the built-in resolver finds its configuration. The proxy fills it in at start-up
/// (from LOCALPROXY_RESOLV_CONF, LOCALPROXY_HOSTS and LOCALPROXY_DNS_PORT, for tests).
public struct BuiltinResolverSettings {
    public var resolvConfPath = "/etc/resolv.conf"
    public var hostsPath = "/etc/hosts"
    /// The port of every nameserver (resolv.conf has no syntax for one).
    public var nameserverPort: UInt16 = 53
    /// Replaces resolv.conf's per-try timeout; for tests, which want fractions of a second.
    public var timeoutMilliseconds: UInt64? = nil

    public init() {}

    /// Files larger than these are read only up to their last whole line within the limit.
    static let hostsFileLimit = 1 << 20
    static let resolvConfLimit = 64 * 1024
}

/// Asynchronous name resolution, by `Resolver.mode`: the system's getaddrinfo (`uv_getaddrinfo`
/// runs it on libuv's thread pool, so the loop never blocks on DNS), or the built-in resolver
/// (BuiltinResolver.swift). Builds with `-D LP_BUILTIN_DNS` leave getaddrinfo out entirely.
public final class Resolver {
    /// Ends every built-in lookup in flight without calling its completion, so that a stopping
    /// program's loop can end at once. (A getaddrinfo already running on libuv's thread pool
    /// cannot be interrupted; it ends by itself.)
    public static func cancelAll() {
        for lookup in BuiltinResolver.inFlight { lookup.cancel() }
        BuiltinResolver.inFlight.removeAll()
    }

    private let request: UnsafeMutablePointer<uv_getaddrinfo_t>
    private var completion: ((Result<[SocketAddress], UVError>) -> Void)? = nil
    private let port: UInt16
    private let host: String

    private init(host: String, port: UInt16) {
        self.host = host
        self.port = port
        request = .allocate(capacity: 1)
    }

    deinit { request.deallocate() }

    /// Resolves `host` (a name or a numeric address) to TCP addresses for `port`.
    public static func resolve(loop: EventLoop, host: String, port: UInt16,
                               _ completion: @escaping (Result<[SocketAddress], UVError>) -> Void) {
        if let numeric = SocketAddress(ip: host, port: port) {
            completion(.success([numeric]))
            return
        }
        #if LP_BUILTIN_DNS
        BuiltinResolver.resolve(loop: loop, host: host, port: port, settings: builtinSettings, completion)
        #else
        if mode == .builtin {
            BuiltinResolver.resolve(loop: loop, host: host, port: port, settings: builtinSettings, completion)
            return
        }
        let resolver = Resolver(host: host, port: port)
        resolver.completion = completion
        resolver.request.pointee.data = Unmanaged.passRetained(resolver).toOpaque()
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        let status = withCString(host) { name in
            uv_getaddrinfo(loop.loop, resolver.request, { req, status, result in
                let unmanaged = Unmanaged<Resolver>.fromOpaque(req!.pointee.data!)
                let me = unmanaged.takeUnretainedValue()
                var addresses: [SocketAddress] = []
                var entry = result
                while let e = entry {
                    if let a = e.pointee.ai_addr {
                        var address = SocketAddress(copying: a, length: Int(e.pointee.ai_addrlen))
                        address.setPort(me.port)
                        addresses.append(address)
                    }
                    entry = e.pointee.ai_next
                }
                uv_freeaddrinfo(result)
                let done = me.completion
                me.completion = nil
                if status != 0 {
                    done?(.failure(UVError(status, "resolving \(me.host)")))
                } else if addresses.isEmpty {
                    done?(.failure(UVError(Int32(UV_EAI_NONAME.rawValue), "resolving \(me.host)")))
                } else {
                    done?(.success(addresses))
                }
                unmanaged.release()
            }, name, nil, &hints)
        }
        if status != 0 {
            Unmanaged<Resolver>.fromOpaque(resolver.request.pointee.data!).release()
            completion(.failure(UVError(status, "resolving \(host)")))
        }
        #endif
    }
}

extension Resolver {
    #if LP_BUILTIN_DNS
    /// The process-wide choice, set once at start-up. This build has no getaddrinfo (it is
    /// meant to be linked fully static), so `.system` also uses the built-in resolver.
    public nonisolated(unsafe) static var mode: ResolverMode = .builtin
    /// Whether this build can use getaddrinfo at all.
    public static let systemResolverAvailable = false
    #else
    /// The process-wide choice, set once at start-up.
    public nonisolated(unsafe) static var mode: ResolverMode = .system
    /// Whether this build can use getaddrinfo at all.
    public static let systemResolverAvailable = true
    #endif

    /// The built-in resolver's files and port, set once at start-up.
    public nonisolated(unsafe) static var builtinSettings = BuiltinResolverSettings()
}
