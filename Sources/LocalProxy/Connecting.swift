import CLibC
import TunnelCore
import TunnelIO
import TunnelTLS

/// TCP keepalive on connections to the service and the MQTT broker: first probe after 30 s of
/// silence, then every 10 s, 3 of them (the kernel drops the connection after about 60 s).
let tcpKeepAlive: (idle: Int32, interval: Int32, count: Int32) = (30, 10, 3)

/// Opens a TCP connection to the first of `addresses` that accepts it, trying them in order, and
/// sets TCP_NODELAY and keepalive on it. `adopt` is given each stream as it is created and nil
/// once that attempt failed, so that an owner who gives up meanwhile can close it; `done` gets
/// the connected stream, or the last address's error. Once `isCurrent` says false (the owner
/// moved on), nothing more is reported.
func connectTCP(loop: EventLoop, to addresses: [SocketAddress], from index: Int = 0, logger: Logger,
                adopt: @escaping (SocketStream?) -> Void, isCurrent: @escaping () -> Bool,
                done: @escaping (Result<SocketStream, UVError>) -> Void) {
    let address = addresses[index]
    logger.debug("connecting to \(address)")
    let stream = SocketStream(loop: loop, kind: .tcp)
    adopt(stream)
    stream.connect(to: address) { error in
        guard isCurrent() else { return }
        if let error {
            stream.close()
            adopt(nil)
            if index + 1 < addresses.count {
                logger.debug("\(error); trying the next address")
                connectTCP(loop: loop, to: addresses, from: index + 1, logger: logger, adopt: adopt, isCurrent: isCurrent, done: done)
            } else {
                done(.failure(error))
            }
            return
        }
        stream.setNoDelay()
        if let error = stream.setKeepAlive(idle: tcpKeepAlive.idle, interval: tcpKeepAlive.interval, count: tcpKeepAlive.count) {
            logger.warning("\(error): a path dropped without a FIN or RST will be noticed by the ping deadline only")
        }
        done(.success(stream))
    }
}

/// Watches SIGINT, SIGTERM, SIGHUP and SIGUSR1 for a process-wide runtime (logging those it
/// cannot watch); `handler` gets the signal's number.
func watchProcessSignals(loop: EventLoop, logger: Logger, _ handler: @escaping (Int32) -> Void) -> [SignalWatcher] {
    var watchers: [SignalWatcher] = []
    for number in [SIGINT, SIGTERM, SIGHUP, SIGUSR1] {
        do {
            watchers.append(try SignalWatcher(loop: loop, signal: number, handler))
        } catch {
            logger.warning("cannot watch signal \(number): \(error)")
        }
    }
    return watchers
}

extension AgentSettings {
    /// The TLS configuration of the broker connection: `-c`'s CAs, the device certificate and
    /// key (loaded from their files now), ALPN on port 443.
    func brokerTLS(_ configuration: Configuration, random: SecureRandom) throws(TLSError) -> TLSConfiguration {
        try TLSConfiguration.client(trustPaths: configuration.trustPaths, verify: configuration.verifyCertificates, random: random,
                                    certificateFile: certificateFile, keyFile: keyFile, alpn: alpn)
    }
}

/// Full-jitter exponential backoff: a random delay up to 1 s, 2 s, 4 s … for attempts 0, 1, 2 …,
/// capped at `maximum` milliseconds.
func backoffDelay(attempt: Int, maximum: Int, random: SecureRandom) -> Int {
    let ceiling = min(maximum, 1000 << min(attempt, 20))
    return Int(random.uint32() % UInt32(ceiling + 1))
}

/// Writes all that `ring` holds to `socket` in one write (both spans when it wraps). On success
/// the bytes are consumed from the ring before `completion` runs. Returns false, doing nothing,
/// when the ring is empty.
func sendRing(_ ring: RingBuffer, on socket: SocketStream, _ completion: @escaping (UVError?) -> Void) -> Bool {
    guard ring.readableCount > 0 else { return false }
    let (a, b) = ring.readableSpans
    let count = a.count + b.count
    socket.write(UnsafeRawBufferPointer(a), UnsafeRawBufferPointer(b)) { error in
        if error == nil { ring.consume(count) }
        completion(error)
    }
    return true
}
