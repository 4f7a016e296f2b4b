/// The client side of one MQTT 3.1.1 connection, as a state machine with no I/O and no clock: the
/// owner passes in the bytes received and the time (`now`, milliseconds on any monotonic clock),
/// and writes out `pendingOutput`. TLS and the socket belong to the owner; so does reconnecting
/// (a new connection gets a new session). The codec is MQTTPacket.swift.
///
/// The device agent uses it to receive tunnel notifications (CONNECT, SUBSCRIBE at QoS 1 to
/// `$aws/things/THING/tunnels/notify`, PUBLISH in, PUBACK out, PINGREQ while idle, DISCONNECT at
/// exit); the local service emulator uses it to PUBLISH notifications at QoS 1.
///
/// Lifecycle:
///
///     idle --start--> connecting --CONNACK 0, no subscriptions--------------------> ready
///                         |      --CONNACK 0--> subscribing --SUBACK, all granted--> ready
///                         |                          |                               |
///                         +------------+-------------+-------------------------------+
///                                      |                                             |
///                     disconnect(): DISCONNECT queued --> disconnecting             |
///     any failure (thrown), connectionClosed(), disconnect() in idle --> finished <--+
///
/// | state         | next states                  | why                                                      |
/// |---------------|------------------------------|----------------------------------------------------------|
/// | idle          | connecting, finished         | `start` queues CONNECT; `disconnect` before it ends       |
/// | connecting    | subscribing, ready, finished | CONNACK 0 (SUBSCRIBE queued if there are subscriptions); CONNACK refused, no CONNACK in time, or anything else first |
/// | subscribing   | ready, finished              | the SUBACK of our SUBSCRIBE grants every filter; a refusal, a mismatch or no SUBACK in time ends |
/// | ready         | disconnecting, finished      | `disconnect`; a protocol violation or an unanswered PINGREQ ends |
/// | disconnecting | finished                     | the owner writes what is left and closes (`connectionClosed`) |
/// | finished      | —                            | every later `receive` throws `.closed`                  |
///
/// What the broker may send, and when (MQTT 3.1.1 §3.2: the first packet from the server is a
/// CONNACK; the others are answers to what we asked or messages for our subscriptions):
/// - CONNACK: only in `connecting`. A second one is a protocol violation.
/// - SUBACK: only in `subscribing`, with the packet id of our SUBSCRIBE and one return code per
///   filter, none granting more than asked; 0x80 is `.subscriptionRefused`. Anything else is a
///   violation.
/// - PUBLISH: in `subscribing` (a persistent session may deliver queued messages before the
///   SUBACK) and `ready`; before CONNACK it is a violation. QoS 1 is answered with PUBACK at once,
///   whether or not DUP is set (removing duplicates is the owner's job).
/// - PINGRESP: only while a PINGREQ of ours is unanswered; an unasked one is a violation.
/// - PUBACK: for a QoS 1 PUBLISH of ours. One for an id not in flight is ignored, not refused:
///   after `resendUnacknowledged` the broker may rightly acknowledge both copies (§4.3.2), and
///   the second PUBACK then finds nothing. PUBACK before CONNACK is a violation.
/// - UNSUBACK (we never unsubscribe) and the packets only clients send (CONNECT, SUBSCRIBE,
///   UNSUBSCRIBE, PINGREQ, DISCONNECT): violations.
/// - In `disconnecting` incoming bytes are dropped unread: after DISCONNECT a client sends
///   nothing more (§3.14.4), so nothing could be answered.
///
/// Timing: `tick(now:)` queues a PINGREQ once nothing was queued for 3/4 of the keep-alive (so
/// the broker's grace of 1.5 keep-alives is never reached even with a slow answer), and fails with
/// `.timeout` when a CONNACK, SUBACK or PINGRESP is `responseTimeoutMilliseconds` late.
/// `nextDeadline` says when to call it. `publish`, `resendUnacknowledged` and `disconnect` take
/// no time: they use the latest `now` given to `start`, `receive` or `tick`, which is never later
/// than the true time, so a PINGREQ can only come early, never late.
///
/// Output is bounded: a PUBLISH that would take the queued output past
/// `maximumOutputLength` is refused with `.queueFull` (the session goes on; try again once the
/// owner has written some and called `consumeOutput`). The small packets the session must send
/// itself (PUBACK, PINGREQ, SUBSCRIBE, DISCONNECT) may go over it, up to twice the limit; past
/// that the session fails with `.queueFull`, because the owner has stopped writing while still
/// feeding it input. An owner should pause reading while `pendingOutput` is longer than the limit.

/// Settings of one client session.
public struct MQTTClientOptions {
    public var clientId: String
    /// Seconds; 0 turns keep-alive (and PINGREQ) off.
    public var keepAliveSeconds: UInt16 = 60
    public var cleanSession: Bool = true
    public var username: String? = nil
    /// Sent only with a `username` (MQTT 3.1.1 §3.1.2.9).
    public var password: [UInt8]? = nil
    /// Sent in one SUBSCRIBE after CONNACK; QoS 0 or 1 each.
    public var subscriptions: [MQTTSubscription]
    /// The largest incoming packet accepted, fixed header included.
    public var maximumPacketLength: Int = 128 * 1024
    /// How long a CONNACK, SUBACK or PINGRESP may take.
    public var responseTimeoutMilliseconds: UInt64 = 10_000
    /// The most bytes of output queued for PUBLISH (see the file's header).
    public var maximumOutputLength: Int = 256 * 1024
    /// The most QoS 1 PUBLISH packets of ours waiting for their PUBACK (at most 65,534, the
    /// packet ids there are besides the SUBSCRIBE's).
    public var maximumUnacknowledged: Int = 100

    public init(clientId: String, subscriptions: [MQTTSubscription]) {
        self.clientId = clientId
        self.subscriptions = subscriptions
    }

    /// The CONNECT packet these options send.
    var connectPacket: MQTTPacket {
        .connect(clientId: clientId, keepAliveSeconds: keepAliveSeconds, cleanSession: cleanSession,
                 username: username, password: password)
    }

    /// Throws `.invalidRequest` with the reason when the CONNECT or the SUBSCRIBE of these
    /// options cannot be encoded (a client id with U+0000, a malformed topic filter, QoS 2...).
    /// `start` makes the same check; call this to refuse a configuration before connecting.
    public func check() throws(MQTTClientFailure) {
        do throws(MQTTError) {
            _ = try connectPacket.encoded()
            if !subscriptions.isEmpty { _ = try MQTTPacket.subscribe(packetId: 1, filters: subscriptions).encoded() }
        } catch {
            throw .invalidRequest("invalid MQTT client options: " + error.description)
        }
    }
}

/// What the session tells its owner about the connection.
public enum MQTTClientEvent: Equatable {
    /// CONNACK accepted the connection.
    case connected(sessionPresent: Bool)
    /// One per filter, in the order of `subscriptions`, once the SUBACK arrived.
    case subscribed(MQTTSubscription, grantedQoS: UInt8)
    /// An incoming PUBLISH (its PUBACK is already queued when it is QoS 1).
    case message(MQTTPublish)
    /// The PUBACK for one of our QoS 1 PUBLISH packets.
    case published(packetId: UInt16)
}

/// Why a session ended, or (for `.queueFull` and `.invalidRequest` from `publish`) why a call was
/// refused.
public enum MQTTClientFailure: Error, Equatable, CustomStringConvertible {
    /// CONNACK with a non-zero return code.
    case refused(returnCode: UInt8)
    /// SUBACK 0x80 for this filter.
    case subscriptionRefused(topicFilter: String)
    /// The broker sent something malformed or out of order (the text says what).
    case protocolViolation(String)
    /// No CONNACK, SUBACK or PINGRESP within `responseTimeoutMilliseconds`.
    case timeout(String)
    /// The connection ended; the session is finished. Thrown by `receive` after the end, and
    /// for the owner to report a connection that closed under it.
    case closed
    /// The output queue or the unacknowledged window is full. From `publish` and
    /// `resendUnacknowledged` the session goes on (try again later); from `receive` or `tick`
    /// (the owner stopped writing output) it is finished.
    case queueFull(String)
    /// A call that cannot be honoured: not in the right state, or a packet that cannot be
    /// encoded (the text says why). The session goes on, except when `start` found the options
    /// invalid.
    case invalidRequest(String)

    /// Compares texts by their bytes: the owner may well compare failures (`failure == .closed`),
    /// and `String ==` would bring the Unicode tables into the device binary (ByteText.swift).
    public static func == (a: MQTTClientFailure, b: MQTTClientFailure) -> Bool {
        switch (a, b) {
        case (.refused(let x), .refused(let y)): return x == y
        case (.subscriptionRefused(let x), .subscriptionRefused(let y)),
             (.protocolViolation(let x), .protocolViolation(let y)),
             (.timeout(let x), .timeout(let y)),
             (.queueFull(let x), .queueFull(let y)),
             (.invalidRequest(let x), .invalidRequest(let y)):
            return x.bytesEqual(y)
        case (.closed, .closed): return true
        default: return false
        }
    }

    public var description: String {
        switch self {
        case .refused(let code):
            let reason = MQTTPacket.connackReason(code)
            let advice: String
            switch code {
            case 1: advice = "the broker does not accept MQTT 3.1.1"
            case 2: advice = "the broker does not accept this client id: check that it is allowed (AWS IoT: at most 128 bytes, and the policy's iot:Connect resource must name it)"
            case 3: advice = "the broker cannot serve the connection now: try again later"
            case 4: advice = "check the user name and password"
            case 5: advice = "check that the device certificate is active and attached to the thing, and that its policy allows iot:Connect with this client id"
            default: advice = "the code is not defined by MQTT 3.1.1"
            }
            return "the MQTT broker refused the connection: CONNACK return code " + decimal(Int(code)) + " (" + reason + "); " + advice
        case .subscriptionRefused(let filter):
            return "the MQTT broker refused the subscription to \"" + printable(filter) + "\" (SUBACK 0x80): check that the device's policy allows iot:Subscribe on this topic filter (and iot:Receive on its topics)"
        case .protocolViolation(let text):
            return "the MQTT broker broke the protocol: " + text
        case .timeout(let text):
            return text
        case .closed:
            return "the MQTT connection was closed"
        case .queueFull(let text):
            return text
        case .invalidRequest(let text):
            return text
        }
    }
}

public final class MQTTClientSession {
    public enum State: Equatable, CustomStringConvertible {
        case idle, connecting, subscribing, ready, disconnecting, finished

        public var description: String {
            switch self {
            case .idle: return "idle"
            case .connecting: return "connecting"
            case .subscribing: return "subscribing"
            case .ready: return "ready"
            case .disconnecting: return "disconnecting"
            case .finished: return "finished"
            }
        }
    }

    /// A QoS 1 PUBLISH of ours waiting for its PUBACK, as encoded (for re-sending).
    private struct InFlight {
        var packetId: UInt16
        var bytes: [UInt8]
    }

    public let options: MQTTClientOptions
    public private(set) var state: State = .idle

    private var decoder: MQTTPacketDecoder
    /// The latest time given by the owner.
    private var now: UInt64 = 0
    /// When a packet was last queued (the keep-alive counts from it).
    private var lastSentAt: UInt64 = 0
    /// When the CONNACK (in `connecting`) or the SUBACK (in `subscribing`) is due.
    private var handshakeDeadline: UInt64? = nil
    /// When the PINGRESP to our PINGREQ is due; nil when no PINGREQ is unanswered.
    private var pingDeadline: UInt64? = nil
    /// The packet id of our SUBSCRIBE while its SUBACK is awaited, else 0.
    private var subscribePacketId: UInt16 = 0
    private var inFlight: [InFlight] = []
    private var nextPacketId: UInt16 = 1
    /// A failure found by `start` (invalid options), thrown by the next `tick` or `receive`.
    private var deferredFailure: MQTTClientFailure? = nil

    /// Queued output: bytes `outputStart..<outputEnd` of one allocation, so that
    /// `pendingOutput` is one contiguous view.
    private var output: UnsafeMutableRawPointer
    private var outputCapacity: Int
    private var outputStart = 0
    private var outputEnd = 0

    public init(options: MQTTClientOptions) {
        self.options = options
        decoder = MQTTPacketDecoder(maximumPacketLength: options.maximumPacketLength)
        outputCapacity = 512
        output = UnsafeMutableRawPointer.allocate(byteCount: outputCapacity, alignment: 8)
    }

    deinit { output.deallocate() }

    // MARK: Owner calls

    /// Queues CONNECT: idle → connecting. Does nothing in any other state. With options that
    /// cannot be encoded (see `MQTTClientOptions.check`), the session is finished instead and
    /// the next `tick` (due at once) throws `.invalidRequest` with the reason.
    public func start(now: UInt64) {
        guard state == .idle else { return }
        self.now = now
        do throws(MQTTClientFailure) {
            try options.check()
            try queue(try encode(options.connectPacket), control: true)
        } catch {
            deferredFailure = error
            state = .finished
            return
        }
        state = .connecting
        handshakeDeadline = now &+ options.responseTimeoutMilliseconds
    }

    /// Feeds bytes received from the broker, in any split. Appends what happened to `events`
    /// (events appended before a throw stay there). After a throw the session is finished.
    public func receive(_ bytes: UnsafeRawBufferPointer, now: UInt64, events: inout [MQTTClientEvent]) throws(MQTTClientFailure) {
        if let failure = deferredFailure {
            deferredFailure = nil
            throw failure
        }
        switch state {
        case .finished:
            throw .closed
        case .idle:
            throw fail(.protocolViolation("bytes arrived before the session sent CONNECT (start was not called)"))
        case .disconnecting:
            return
        case .connecting, .subscribing, .ready:
            break
        }
        if now > self.now { self.now = now }
        var input = bytes
        while true {
            let packet: MQTTPacket?
            do throws(MQTTError) {
                packet = try decoder.next(&input)
            } catch {
                throw fail(.protocolViolation(error.description))
            }
            guard let packet else { return }
            try handle(packet, &events)
        }
    }

    /// `receive` for bytes held in an array (the emulator, tests). A typed-throws closure cannot
    /// go through `Array.withUnsafeBytes`, which only rethrows, so this carries the failure out.
    public func receive(_ bytes: [UInt8], now: UInt64, events: inout [MQTTClientEvent]) throws(MQTTClientFailure) {
        var failure: MQTTClientFailure? = nil
        bytes.withUnsafeBytes { raw in
            do throws(MQTTClientFailure) {
                try receive(raw, now: now, events: &events)
            } catch {
                failure = error
            }
        }
        if let failure { throw failure }
    }

    /// Queues a PUBLISH. QoS 1 returns its packet id, kept (with the bytes) until its PUBACK;
    /// `resendUnacknowledged` sends such packets again with DUP set. Only in `ready`. Throws
    /// `.invalidRequest` (wrong state, topic or QoS) or `.queueFull`; the session goes on.
    public func publish(topic: String, payload: [UInt8], qos: UInt8, retain: Bool) throws(MQTTClientFailure) -> UInt16? {
        guard state == .ready else {
            throw .invalidRequest("cannot publish to \"" + printable(topic) + "\": the MQTT session is " + state.description + ", not ready")
        }
        if qos == 1 && inFlight.count >= min(options.maximumUnacknowledged, 65_534) {
            throw .queueFull("cannot publish to \"" + printable(topic) + "\": " + decimal(inFlight.count) + " QoS 1 messages already wait for their PUBACK (maximumUnacknowledged)")
        }
        let id: UInt16? = qos == 1 ? freePacketId() : nil
        let bytes = try encode(.publish(MQTTPublish(topic: topic, payload: payload, qos: qos, retain: retain, duplicate: false, packetId: id)))
        if bytes.count > options.maximumOutputLength {
            throw .invalidRequest("cannot publish to \"" + printable(topic) + "\": the packet of " + decimal(bytes.count) + " bytes is longer than the output limit of " + decimal(options.maximumOutputLength) + " bytes (maximumOutputLength)")
        }
        try queue(bytes, control: false)
        if let id {
            inFlight.append(InFlight(packetId: id, bytes: bytes))
            nextPacketId = id == UInt16.max ? 1 : id + 1
        }
        return id
    }

    /// Queues every QoS 1 PUBLISH still waiting for its PUBACK again, oldest first, with the
    /// DUP flag set (§4.4). Only in `ready`; all or none (`.queueFull` when they do not fit).
    public func resendUnacknowledged() throws(MQTTClientFailure) {
        guard state == .ready else {
            throw .invalidRequest("cannot re-send: the MQTT session is " + state.description + ", not ready")
        }
        var total = 0
        for packet in inFlight { total += packet.bytes.count }
        guard outputCount + total <= options.maximumOutputLength else {
            throw .queueFull("cannot re-send " + decimal(inFlight.count) + " unacknowledged PUBLISH packets (" + decimal(total) + " bytes): the output queue holds " + decimal(outputCount) + " of at most " + decimal(options.maximumOutputLength) + " bytes")
        }
        for i in 0..<inFlight.count {
            inFlight[i].bytes[0] |= 0x08
            try queue(inFlight[i].bytes, control: false)
        }
    }

    /// QoS 1 PUBLISH packets of ours waiting for their PUBACK.
    public var unacknowledgedCount: Int { inFlight.count }

    /// Time passes: queues PINGREQ when nothing was queued for 3/4 of the keep-alive (never with
    /// a keep-alive of 0, nor before CONNACK, nor while a PINGREQ is unanswered); throws
    /// `.timeout` when a CONNACK, SUBACK or PINGRESP is overdue. After a throw the session is
    /// finished.
    public func tick(now: UInt64) throws(MQTTClientFailure) {
        if let failure = deferredFailure {
            deferredFailure = nil
            throw failure
        }
        guard state == .connecting || state == .subscribing || state == .ready else { return }
        if now > self.now { self.now = now }
        let timeout = options.responseTimeoutMilliseconds
        if let due = handshakeDeadline, self.now >= due {
            if state == .connecting {
                throw fail(.timeout("no CONNACK within " + String(timeout) + " ms of sending CONNECT: the broker did not accept the MQTT session in time (check the endpoint address and port, and that TLS reached an MQTT broker)"))
            }
            throw fail(.timeout("no SUBACK within " + String(timeout) + " ms of sending SUBSCRIBE for " + filterList()))
        }
        if let due = pingDeadline, self.now >= due {
            throw fail(.timeout("no PINGRESP within " + String(timeout) + " ms of sending PINGREQ: the connection to the MQTT broker is dead or stalled"))
        }
        if let due = pingDue, self.now >= due {
            try queue([0xC0, 0x00], control: true)
            pingDeadline = self.now &+ timeout
        }
    }

    /// When `tick` must next be called (absolute, in the owner's milliseconds), or nil when no
    /// timer is needed.
    public var nextDeadline: UInt64? {
        if deferredFailure != nil { return now }
        guard state == .connecting || state == .subscribing || state == .ready else { return nil }
        var next = handshakeDeadline
        if let p = pingDeadline { next = min(next ?? p, p) }
        if let p = pingDue { next = min(next ?? p, p) }
        return next
    }

    /// Queues DISCONNECT: connecting, subscribing or ready → disconnecting. The owner then writes
    /// `pendingOutput` and closes the connection. In idle the session just finishes; later it
    /// does nothing.
    public func disconnect() {
        switch state {
        case .idle:
            state = .finished
        case .connecting, .subscribing, .ready:
            // A DISCONNECT must go out even over the limit: the owner is about to write and close.
            appendOutput([0xE0, 0x00])
            lastSentAt = now
            state = .disconnecting
            handshakeDeadline = nil
            pingDeadline = nil
        case .disconnecting, .finished:
            break
        }
    }

    /// The owner's connection ended (closed by either side, or failed): the session is finished.
    public func connectionClosed() {
        state = .finished
        handshakeDeadline = nil
        pingDeadline = nil
    }

    /// Bytes to send, in order; valid until the next call to the session. The owner writes what
    /// it can (to TLS) and calls `consumeOutput` with the number of bytes taken.
    public var pendingOutput: UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: output + outputStart, count: outputCount)
    }

    /// Drops the first `count` bytes of `pendingOutput`, which the owner has written.
    public func consumeOutput(_ count: Int) {
        precondition(count >= 0 && count <= outputCount, "MQTTClientSession.consumeOutput past the pending output")
        outputStart += count
        if outputStart == outputEnd {
            outputStart = 0
            outputEnd = 0
        }
    }

    // MARK: Incoming packets

    private func handle(_ packet: MQTTPacket, _ events: inout [MQTTClientEvent]) throws(MQTTClientFailure) {
        if state == .connecting {
            guard case .connack(let sessionPresent, let code) = packet else {
                throw fail(.protocolViolation(packet.packetType.description + " arrived before CONNACK; the broker's first packet must be CONNACK"))
            }
            if code != 0 { throw fail(.refused(returnCode: code)) }
            events.append(.connected(sessionPresent: sessionPresent))
            if options.subscriptions.isEmpty {
                handshakeDeadline = nil
                state = .ready
                return
            }
            let id = freePacketId()
            let bytes = try encode(.subscribe(packetId: id, filters: options.subscriptions))
            try queue(bytes, control: true)
            nextPacketId = id == UInt16.max ? 1 : id + 1
            subscribePacketId = id
            handshakeDeadline = now &+ options.responseTimeoutMilliseconds
            state = .subscribing
            return
        }
        switch packet {
        case .connack:
            throw fail(.protocolViolation("a second CONNACK arrived; a broker sends one per connection"))

        case .suback(let id, let codes):
            try acceptSuback(id, codes, &events)

        case .publish(let message):
            if let id = message.packetId { try queue([0x40, 0x02, UInt8(truncatingIfNeeded: id >> 8), UInt8(truncatingIfNeeded: id)], control: true) }
            events.append(.message(message))

        case .puback(let id):
            for i in 0..<inFlight.count where inFlight[i].packetId == id {
                inFlight.remove(at: i)
                events.append(.published(packetId: id))
                return
            }
            // Not in flight: a second PUBACK for a re-sent PUBLISH (see the header); ignored.

        case .pingresp:
            guard pingDeadline != nil else {
                throw fail(.protocolViolation("PINGRESP arrived without a PINGREQ waiting for it"))
            }
            pingDeadline = nil

        case .unsuback(let id):
            throw fail(.protocolViolation("UNSUBACK (packet id " + decimal(Int(id)) + ") arrived, but this client never sends UNSUBSCRIBE"))

        case .connect, .subscribe, .unsubscribe, .pingreq, .disconnect:
            throw fail(.protocolViolation(packet.packetType.description + " arrived from the broker; only clients send it"))
        }
    }

    private func acceptSuback(_ id: UInt16, _ codes: [UInt8], _ events: inout [MQTTClientEvent]) throws(MQTTClientFailure) {
        guard state == .subscribing else {
            throw fail(.protocolViolation("SUBACK (packet id " + decimal(Int(id)) + ") arrived with no SUBSCRIBE waiting for it"))
        }
        guard id == subscribePacketId else {
            throw fail(.protocolViolation("SUBACK has packet id " + decimal(Int(id)) + ", but the SUBSCRIBE has " + decimal(Int(subscribePacketId))))
        }
        let subscriptions = options.subscriptions
        guard codes.count == subscriptions.count else {
            throw fail(.protocolViolation("SUBACK has " + decimal(codes.count) + " return codes for a SUBSCRIBE of " + decimal(subscriptions.count) + " topic filters"))
        }
        for i in 0..<codes.count {
            if codes[i] == MQTTPacket.subscriptionFailure {
                throw fail(.subscriptionRefused(topicFilter: subscriptions[i].topicFilter))
            }
            if codes[i] > subscriptions[i].qos {
                throw fail(.protocolViolation("SUBACK grants QoS " + decimal(Int(codes[i])) + " to \"" + printable(subscriptions[i].topicFilter) + "\", which asked for QoS " + decimal(Int(subscriptions[i].qos)) + " at most"))
            }
        }
        for i in 0..<codes.count { events.append(.subscribed(subscriptions[i], grantedQoS: codes[i])) }
        subscribePacketId = 0
        handshakeDeadline = nil
        state = .ready
    }

    // MARK: Helpers

    /// When a PINGREQ is due, or nil when none will be sent.
    private var pingDue: UInt64? {
        guard options.keepAliveSeconds > 0, pingDeadline == nil, state == .subscribing || state == .ready else { return nil }
        return lastSentAt &+ UInt64(options.keepAliveSeconds) * 750
    }

    private var outputCount: Int { outputEnd - outputStart }

    /// The next packet id from `nextPacketId` on (1...65535, wrapping) that is not in use. It is
    /// taken only when the caller advances `nextPacketId` past it, so a refused PUBLISH uses none.
    private func freePacketId() -> UInt16 {
        var id = nextPacketId
        while id == subscribePacketId || isInFlight(id) {
            id = id == UInt16.max ? 1 : id + 1
        }
        return id
    }

    private func isInFlight(_ id: UInt16) -> Bool {
        for packet in inFlight where packet.packetId == id { return true }
        return false
    }

    private func encode(_ packet: MQTTPacket) throws(MQTTClientFailure) -> [UInt8] {
        do throws(MQTTError) {
            return try packet.encoded()
        } catch {
            throw .invalidRequest(error.description)
        }
    }

    private func filterList() -> String {
        var text = ""
        for s in options.subscriptions {
            text += (text.utf8.isEmpty ? "\"" : ", \"") + printable(s.topicFilter) + "\""
        }
        return text
    }

    /// Queues a packet and restarts the keep-alive count. A PUBLISH (`control` false) must fit
    /// under `maximumOutputLength` (refused, the session goes on); a packet the session sends
    /// itself may go up to twice that (past it the session fails: the owner stopped writing).
    private func queue(_ bytes: [UInt8], control: Bool) throws(MQTTClientFailure) {
        let limit = control ? 2 * options.maximumOutputLength : options.maximumOutputLength
        if outputCount + bytes.count > limit {
            let text = "the MQTT output queue holds " + decimal(outputCount) + " bytes and cannot take " + decimal(bytes.count) + " more (limit " + decimal(limit) + "): the connection is not being written"
            if control { throw fail(.queueFull(text)) }
            throw .queueFull(text)
        }
        appendOutput(bytes)
        lastSentAt = now
    }

    private func appendOutput(_ bytes: [UInt8]) {
        let n = bytes.count
        if outputEnd + n > outputCapacity {
            let pending = outputCount
            if pending + n <= outputCapacity {
                // Room enough once the written bytes are dropped from the front.
                output.copyMemory(from: output + outputStart, byteCount: pending)
            } else {
                var capacity = outputCapacity
                while capacity < pending + n { capacity *= 2 }
                let grown = UnsafeMutableRawPointer.allocate(byteCount: capacity, alignment: 8)
                grown.copyMemory(from: output + outputStart, byteCount: pending)
                output.deallocate()
                output = grown
                outputCapacity = capacity
            }
            outputStart = 0
            outputEnd = pending
        }
        bytes.withUnsafeBytes { source in
            if let base = source.baseAddress, n > 0 { (output + outputEnd).copyMemory(from: base, byteCount: n) }
        }
        outputEnd += n
    }

    private func fail(_ failure: MQTTClientFailure) -> MQTTClientFailure {
        state = .finished
        handshakeDeadline = nil
        pingDeadline = nil
        return failure
    }
}
