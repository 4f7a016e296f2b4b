import CLibUV
import TunnelCore

/// How `Resolver.resolve` turns host names into addresses.
public enum ResolverMode: Equatable, Sendable, CustomStringConvertible {
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

/// Asynchronous name resolution for one owner (a runtime, the emulator's MQTT client), by its
/// `mode`: the system's getaddrinfo (`uv_getaddrinfo` runs it on libuv's thread pool, so the
/// loop never blocks on DNS), or the built-in resolver (BuiltinResolver.swift). Builds with
/// `-D LP_BUILTIN_DNS` leave getaddrinfo out entirely.
///
/// The owner sets `mode` and `builtinSettings` before its first lookup and calls `cancelAll`
/// when it stops; lookups of other owners (the agent's MQTT connection while one of its tunnel
/// sessions stops) are not touched.
public final class Resolver {
    #if LP_BUILTIN_DNS
    /// This build has no getaddrinfo (it is meant to be linked fully static), so `.system`
    /// also uses the built-in resolver.
    public static let defaultMode: ResolverMode = .builtin
    /// Whether this build can use getaddrinfo at all.
    public static let systemResolverAvailable = false
    #else
    public static let defaultMode: ResolverMode = .system
    /// Whether this build can use getaddrinfo at all.
    public static let systemResolverAvailable = true
    #endif

    /// How this resolver's lookups are done (`--dns`).
    public var mode: ResolverMode
    /// The built-in resolver's files and port.
    public var builtinSettings: BuiltinResolverSettings
    /// Built-in lookups in flight, so that a stopping owner can end them (`cancelAll`) instead
    /// of waiting out their timeouts (up to timeout × attempts × nameservers). Each lookup
    /// holds this resolver until it finishes or is cancelled, and removes itself then.
    var inFlight: [BuiltinResolver] = []

    public init(mode: ResolverMode = Resolver.defaultMode, builtinSettings: BuiltinResolverSettings = BuiltinResolverSettings()) {
        self.mode = mode
        self.builtinSettings = builtinSettings
    }

    /// Ends every built-in lookup of this resolver in flight without calling its completion, so
    /// that a stopping owner's handles close at once. (A getaddrinfo already running on libuv's
    /// thread pool cannot be interrupted; it ends by itself.)
    public func cancelAll() {
        for lookup in inFlight { lookup.cancel() }
        inFlight.removeAll()
    }

    /// Resolves `host` (a name or a numeric address) to TCP addresses for `port`.
    public func resolve(loop: EventLoop, host: String, port: UInt16,
                        _ completion: @escaping (Result<[SocketAddress], UVError>) -> Void) {
        if let numeric = SocketAddress(ip: host, port: port) {
            completion(.success([numeric]))
            return
        }
        let done = LookupCompletion(completion)
        #if LP_BUILTIN_DNS
        BuiltinResolver.resolve(loop: loop, host: host, port: port, settings: builtinSettings, registry: self, done)
        #else
        if mode == .builtin {
            BuiltinResolver.resolve(loop: loop, host: host, port: port, settings: builtinSettings, registry: self, done)
            return
        }
        SystemLookup.resolve(loop: loop, host: host, port: port, done)
        #endif
    }
}

/// The completion of one lookup, handed to the lookups by reference. Given the closure itself,
/// the optimizer compiled a copy of each lookup's start for every caller's closure (three of
/// `BuiltinResolver.resolve` and three of `SystemLookup.resolve`, about 6.7 KB of the armv7
/// binary: docs/FOOTPRINT.md); a class reference gives it nothing to specialise on.
final class LookupCompletion {
    let call: (Result<[SocketAddress], UVError>) -> Void

    init(_ call: @escaping (Result<[SocketAddress], UVError>) -> Void) {
        self.call = call
    }
}

#if !LP_BUILTIN_DNS
/// One getaddrinfo request: it keeps itself alive (through the request's `data`) until libuv
/// reports the result from its thread pool.
private final class SystemLookup {
    private let request: UnsafeMutablePointer<uv_getaddrinfo_t>
    private var completion: LookupCompletion? = nil
    private let port: UInt16
    private let host: String

    private init(host: String, port: UInt16) {
        self.host = host
        self.port = port
        request = .allocate(capacity: 1)
    }

    deinit { request.deallocate() }

    static func resolve(loop: EventLoop, host: String, port: UInt16, _ completion: LookupCompletion) {
        let lookup = SystemLookup(host: host, port: port)
        lookup.completion = completion
        lookup.request.pointee.data = Unmanaged.passRetained(lookup).toOpaque()
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        let status = withCString(host) { name in
            uv_getaddrinfo(loop.loop, lookup.request, { req, status, result in
                let unmanaged = Unmanaged<SystemLookup>.fromOpaque(req!.pointee.data!)
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
                    done?.call(.failure(UVError(status, "resolving \(me.host)")))
                } else if addresses.isEmpty {
                    done?.call(.failure(UVError(Int32(UV_EAI_NONAME.rawValue), "resolving \(me.host)")))
                } else {
                    done?.call(.success(addresses))
                }
                unmanaged.release()
            }, name, nil, &hints)
        }
        if status != 0 {
            Unmanaged<SystemLookup>.fromOpaque(lookup.request.pointee.data!).release()
            completion.call(.failure(UVError(status, "resolving \(host)")))
        }
    }
}
#endif
