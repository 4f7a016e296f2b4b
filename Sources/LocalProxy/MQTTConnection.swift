import TunnelCore
import TunnelIO
import TunnelTLS

/// What the owner of an MQTT connection hears from it.
public protocol MQTTConnectionDelegate: AnyObject {
    /// Connected and subscribed (or connected, with nothing to subscribe to).
    func mqttReady()
    /// A message arrived (its PUBACK, for QoS 1, is already on its way).
    func mqttMessage(_ message: MQTTPublish)
    /// The broker acknowledged one of our QoS 1 publications.
    func mqttPublished(packetId: UInt16)
    /// The connection ended; called exactly once.
    func mqttClosed(_ reason: MQTTCloseReason)
}

public enum MQTTCloseReason: CustomStringConvertible {
    /// The broker refused the connection or the subscription: most often the certificate is not
    /// active or the policy does not allow it. Retrying may help once someone fixes the policy.
    case refused(MQTTClientFailure)
    /// The broker's certificate did not verify.
    case certificate(TLSError)
    /// Transport, TLS or protocol failure, or a missed deadline: worth reconnecting.
    case failed(String)
    /// `stop()` finished.
    case stopped

    public var description: String {
        switch self {
        case .refused(let failure): return "\(failure)"
        case .certificate(let error): return "the broker's certificate was not accepted: \(error)"
        case .failed(let why): return why
        case .stopped: return "stopped"
        }
    }
}

/// One MQTT connection to a broker: TCP, TLS (with the device certificate), then an
/// `MQTTClientSession` (TunnelCore/MQTTSession.swift) over the decrypted bytes. Client role.
/// The session decides what to send and when; this class moves bytes, runs the session's
/// deadline timer and reports outcomes. MQTT traffic here is a few small packets, so it goes
/// through one small buffer rather than the tunnel's zero-copy pipeline.
///
///     resolving -> connecting -> tlsHandshake -> mqtt (session: connecting, subscribing, ready)
///         any failure, or the broker closing  -> closed (reported once)
///     stop(): DISCONNECT, close_notify, then closed once they are written (at most 2 s)
public final class MQTTConnection {
    enum State: Equatable {
        case idle, resolving, connecting, tlsHandshake, mqtt, stopping, closed
    }

    let host: String
    let port: UInt16
    private let loop: EventLoop
    private let resolver: Resolver
    private let tlsConfiguration: TLSConfiguration
    private let logger: Logger
    private let session: MQTTClientSession
    public var delegate: MQTTConnectionDelegate?
    private(set) var state = State.idle
    private var socket: SocketStream? = nil
    private var engine: TLSEngine? = nil
    private let timer: Timer
    /// Decrypted bytes are handed to the session from here, one read at a time.
    private let plaintext = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 1)
    private var writing = false
    private var driving = false
    private var reportedReady = false

    /// How long resolving, connecting, TLS and CONNACK may take together.
    static let handshakeTimeoutMilliseconds: UInt64 = 30_000

    public init(loop: EventLoop, resolver: Resolver, host: String, port: UInt16, tls: TLSConfiguration, options: MQTTClientOptions, logger: Logger) {
        self.loop = loop
        self.resolver = resolver
        self.host = host
        self.port = port
        self.tlsConfiguration = tls
        self.logger = logger
        session = MQTTClientSession(options: options)
        timer = Timer(loop: loop)
    }

    deinit {
        plaintext.deallocate()
    }

    public var target: String { "\(host):\(port)" }

    /// Starts connecting; the outcome arrives through the delegate.
    public func start() {
        guard state == .idle else { return }
        state = .resolving
        timer.start(after: MQTTConnection.handshakeTimeoutMilliseconds) { [self] in
            fail(.failed("no MQTT connection to \(target) within \(MQTTConnection.handshakeTimeoutMilliseconds / 1000) s"))
        }
        resolver.resolve(loop: loop, host: host, port: port) { [self] result in
            guard state == .resolving else { return }
            switch result {
            case .success(let addresses):
                state = .connecting
                connectTCP(loop: loop, to: addresses, logger: logger, adopt: { [self] in socket = $0 },
                           isCurrent: { [self] in state == .connecting }) { [self] result in
                    switch result {
                    case .success(let stream): startTLS(stream)
                    case .failure(let error): fail(.failed("cannot connect to the MQTT broker \(target): \(error)"))
                    }
                }
            case .failure(let error): fail(.failed("\(error)"))
            }
        }
    }

    private func startTLS(_ stream: SocketStream) {
        let tls: TLSEngine
        do {
            tls = try TLSEngine(configuration: tlsConfiguration, serverName: host, inputSize: 32 * 1024, outputSize: 32 * 1024)
        } catch {
            fail(.failed("\(error)"))
            return
        }
        engine = tls
        stream.allocate = { tls.ciphertextIn.writableSpans.0 }
        stream.onRead = { [self] result in
            switch result {
            case .success(let n):
                tls.ciphertextIn.commit(n)
                drive()
            case .failure(let error) where error.code == UVError.endOfFile:
                fail(.failed(state == .mqtt ? "the MQTT broker \(target) closed the connection" : "the MQTT broker \(target) closed the connection during the handshake (a broker that wants a client certificate it does not trust does this: check --cert and that the certificate is registered and active)"))
            case .failure(let error):
                fail(.failed("connection to the MQTT broker \(target) lost: \(error)"))
            }
        }
        state = .tlsHandshake
        stream.startReading()
        drive()
    }

    // MARK: The pump

    /// Why a pump stopped.
    private enum PumpFailure: Error {
        case tls(TLSError)
        case mqtt(MQTTClientFailure)
    }

    /// Handshake, then decrypted bytes into the session, its output into TLS, TLS onto the socket.
    private func drive() {
        guard !driving, let engine, let socket, state == .tlsHandshake || state == .mqtt || state == .stopping else { return }
        driving = true
        defer { driving = false }
        do {
            try pump(engine)
        } catch {
            switch error {
            case .tls(let tlsError) where state == .tlsHandshake && tlsError.isCertificateVerificationFailure:
                fail(.certificate(tlsError))
            case .tls(let tlsError) where state == .tlsHandshake:
                fail(.failed("TLS handshake with the MQTT broker \(target) failed: \(tlsError)"))
            case .tls(let tlsError):
                fail(.failed("TLS error from the MQTT broker \(target): \(tlsError)"))
            case .mqtt(let failure):
                switch failure {
                case .refused, .subscriptionRefused: fail(.refused(failure))
                default: fail(.failed("MQTT: \(failure)"))
                }
            }
            return
        }
        guard state != .closed else { return }
        flush()
        if state != .closed && !socket.isReading && engine.ciphertextIn.writableCount > 0 { socket.startReading() }
    }

    /// Finishes the handshake, then hands every decrypted byte to the session and acts on its events.
    private func pump(_ engine: TLSEngine) throws(PumpFailure) {
        if state == .tlsHandshake {
            let status: TLSStatus
            do { status = try engine.handshake() } catch { throw .tls(error) }
            guard status == .done else { return }
            logger.info("MQTT: TLS established with \(target): \(engine.negotiated)\(engine.negotiatedALPN.map { ", ALPN \($0)" } ?? "")")
            state = .mqtt
            session.start(now: loop.now)
        }
        var events: [MQTTClientEvent] = []
        while state == .mqtt || state == .stopping {
            let n: Int
            let status: TLSStatus
            do { (n, status) = try engine.read(into: plaintext) } catch { throw .tls(error) }
            if n == 0 {
                if status == .done && engine.receivedCloseNotify {
                    fail(.failed("the MQTT broker \(target) ended the TLS session"))
                }
                break
            }
            do {
                try session.receive(UnsafeRawBufferPointer(rebasing: plaintext[0..<n]), now: loop.now, events: &events)
            } catch {
                throw .mqtt(error)
            }
            for event in events { handle(event) }
            events.removeAll(keepingCapacity: true)
        }
        scheduleDeadline()
    }

    private func handle(_ event: MQTTClientEvent) {
        switch event {
        case .connected(let sessionPresent):
            logger.debug("MQTT: connected to \(target)\(sessionPresent ? " (the broker kept our session)" : "")")
            if session.state == .ready { reportReady() }
        case .subscribed(let subscription, let granted):
            logger.debug("MQTT: subscribed to \(subscription.topicFilter) (QoS \(granted))")
            if session.state == .ready { reportReady() }
        case .message(let message):
            delegate?.mqttMessage(message)
        case .published(let packetId):
            delegate?.mqttPublished(packetId: packetId)
        }
    }

    private func reportReady() {
        guard !reportedReady else { return }
        reportedReady = true
        delegate?.mqttReady()
    }

    /// The session's next deadline (keep-alive ping, an answer overdue) on the timer.
    private func scheduleDeadline() {
        guard state == .mqtt else { return }
        guard let deadline = session.nextDeadline else {
            timer.stop()
            return
        }
        let now = loop.now
        timer.start(after: deadline > now ? deadline - now : 0) { [self] in
            guard state == .mqtt else { return }
            do throws(MQTTClientFailure) {
                try session.tick(now: loop.now)
            } catch {
                fail(.failed("MQTT: \(error)"))
                return
            }
            flush()
            scheduleDeadline()
        }
    }

    // MARK: Sending

    /// Publishes `payload` on `topic`; returns the packet id of a QoS 1 publication (reported
    /// by `mqttPublished` once acknowledged), nil for QoS 0 or when it could not be queued (logged).
    public func publish(topic: String, payload: [UInt8], qos: UInt8) -> UInt16? {
        guard state == .mqtt, session.state == .ready else { return nil }
        do {
            let id = try session.publish(topic: topic, payload: payload, qos: qos, retain: false)
            flush()
            return id
        } catch {
            logger.error("MQTT: cannot publish on \(topic): \(error)")
            return nil
        }
    }

    /// Moves the session's output into TLS and the ciphertext onto the socket.
    private func flush() {
        guard let engine, let socket, state != .closed else { return }
        while state == .mqtt || state == .stopping {
            let pending = session.pendingOutput
            if pending.isEmpty { break }
            let taken: Int
            do {
                taken = try engine.write(pending)
            } catch {
                fail(.failed("TLS error towards the MQTT broker \(target): \(error)"))
                return
            }
            if taken == 0 { break }
            session.consumeOutput(taken)
        }
        let out = engine.ciphertextOut
        guard !writing else { return }
        writing = sendRing(out, on: socket) { [self] error in
            writing = false
            guard state != .closed else { return }
            if let error {
                fail(.failed("sending to the MQTT broker \(target) failed: \(error)"))
                return
            }
            if state == .stopping && out.readableCount == 0 && session.pendingOutput.isEmpty {
                fail(.stopped)
                return
            }
            flush()
        }
    }

    // MARK: Ending

    /// Says goodbye (DISCONNECT, close_notify) when connected, then closes.
    public func stop() {
        switch state {
        case .mqtt:
            state = .stopping
            session.disconnect()
            flush()
            engine?.close()
            flush()
            if !writing && (engine?.ciphertextOut.readableCount ?? 0) == 0 {
                fail(.stopped)
            } else {
                timer.start(after: 2000) { [self] in fail(.stopped) }
            }
        case .stopping, .closed:
            return
        default:
            fail(.stopped)
        }
    }

    /// Drops the connection at once.
    func abort(_ why: String) {
        fail(.failed(why))
    }

    private func fail(_ reason: MQTTCloseReason) {
        guard state != .closed else { return }
        state = .closed
        timer.close()
        socket?.close()
        socket = nil
        let d = delegate
        delegate = nil
        d?.mqttClosed(reason)
    }
}
