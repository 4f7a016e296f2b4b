// The MQTT client session (Sources/TunnelCore/MQTTSession.swift) driven with bytes and a fake
// clock: every step states the exact bytes the session must queue and the exact events it must
// report, so an extra PINGREQ, a missing PUBACK or a wrong packet id fails the test.
import Testing
import TunnelCore

private let notifyTopic = "$aws/things/gw1/tunnels/notify"
private let notifyTopicHex = "24 61 77 73 2F 74 68 69 6E 67 73 2F 67 77 31 2F 74 75 6E 6E 65 6C 73 2F 6E 6F 74 69 66 79"
private var notify: MQTTSubscription { MQTTSubscription(topicFilter: notifyTopic, qos: 1) }

private let connectHex = "10 0F 00 04 4D 51 54 54 04 02 00 3C 00 03 67 77 31"
private let subscribeHex = "82 23 00 01 00 1E " + notifyTopicHex + " 01"
private let connackHex = "20 02 00 00"
private let subackHex = "90 03 00 01 01"
/// A QoS 1 notification with packet id 10 and payload "{}".
private let notificationHex = "32 24 00 1E " + notifyTopicHex + " 00 0A 7B 7D"
private var notification: MQTTPublish { MQTTPublish(topic: notifyTopic, payload: Array("{}".utf8), qos: 1, packetId: 10) }

private func options(_ subscriptions: [MQTTSubscription] = [notify], keepAlive: UInt16 = 60) -> MQTTClientOptions {
    var o = MQTTClientOptions(clientId: "gw1", subscriptions: subscriptions)
    o.keepAliveSeconds = keepAlive
    return o
}

/// Everything queued for sending, taken (as the owner does after writing it all).
private func drain(_ session: MQTTClientSession) -> String {
    let out = Array(session.pendingOutput)
    session.consumeOutput(out.count)
    return hex(out)
}

private func feed(_ session: MQTTClientSession, _ hexText: String, at now: UInt64) throws(MQTTClientFailure) -> [MQTTClientEvent] {
    var events: [MQTTClientEvent] = []
    try session.receive(bytes(hexText), now: now, events: &events)
    return events
}

/// The failure a call throws, or nil.
private func failure(_ body: () throws(MQTTClientFailure) -> Void) -> MQTTClientFailure? {
    do throws(MQTTClientFailure) {
        try body()
        return nil
    } catch {
        return error
    }
}

/// A session that is ready: CONNECT at `now`, CONNACK (and SUBACK) 10 ms later; output drained.
private func readySession(_ o: MQTTClientOptions = options(), now: UInt64 = 0) throws -> MQTTClientSession {
    let session = MQTTClientSession(options: o)
    session.start(now: now)
    _ = drain(session)
    _ = try feed(session, connackHex, at: now + 10)
    if !o.subscriptions.isEmpty {
        _ = drain(session)
        _ = try feed(session, subackHex, at: now + 10)
    }
    #expect(session.state == .ready)
    return session
}

@Suite("MQTT client session")
struct MQTTSessionTests {

    // MARK: The whole exchange

    @Test("CONNECT, CONNACK, SUBSCRIBE, SUBACK, PUBLISH QoS 1, PUBACK, DISCONNECT: exact bytes")
    func wholeExchange() throws {
        let session = MQTTClientSession(options: options())
        #expect(session.state == .idle)
        #expect(session.nextDeadline == nil)
        #expect(drain(session) == "")

        session.start(now: 1_000)
        #expect(session.state == .connecting)
        #expect(drain(session) == hex(bytes(connectHex)))
        #expect(session.nextDeadline == 11_000)

        #expect(try feed(session, connackHex, at: 1_020) == [.connected(sessionPresent: false)])
        #expect(session.state == .subscribing)
        #expect(drain(session) == hex(bytes(subscribeHex)))
        // SUBACK due 10 s after the SUBSCRIBE was queued.
        #expect(session.nextDeadline == 11_020)

        #expect(try feed(session, subackHex, at: 1_040) == [.subscribed(notify, grantedQoS: 1)])
        #expect(session.state == .ready)
        #expect(drain(session) == "")
        // PINGREQ due 45 s (3/4 of 60) after the SUBSCRIBE.
        #expect(session.nextDeadline == 46_020)

        #expect(try feed(session, notificationHex, at: 2_000) == [.message(notification)])
        #expect(drain(session) == hex(bytes("40 02 00 0A")))
        #expect(session.nextDeadline == 47_000)

        session.disconnect()
        #expect(session.state == .disconnecting)
        #expect(drain(session) == "e000")
        #expect(session.nextDeadline == nil)
        // After DISCONNECT nothing is answered.
        #expect(try feed(session, notificationHex, at: 3_000) == [])
        #expect(drain(session) == "")
        session.connectionClosed()
        #expect(session.state == .finished)
        #expect(failure { () throws(MQTTClientFailure) in _ = try feed(session, "D0 00", at: 4_000) } == .closed)
    }

    @Test("The broker's bytes cut anywhere give the same events and the same output")
    func everySplitOfTheExchange() throws {
        let incoming = bytes(connackHex + subackHex + notificationHex + "32 24 00 1E " + notifyTopicHex + " 00 0B 7B 7D" + "30 07 00 03 61 2F 62 68 69")
        var second = notification
        second.packetId = 11
        let expectedEvents: [MQTTClientEvent] = [
            .connected(sessionPresent: false), .subscribed(notify, grantedQoS: 1), .message(notification), .message(second),
            .message(MQTTPublish(topic: "a/b", payload: Array("hi".utf8))),
        ]
        let expectedOutput = hex(bytes(connectHex + subscribeHex + "40 02 00 0A 40 02 00 0B"))
        for lengths in splits(of: incoming.count, pairLimit: 0) {
            let session = MQTTClientSession(options: options())
            session.start(now: 0)
            var events: [MQTTClientEvent] = []
            for piece in cut(incoming, lengths) {
                try session.receive(piece, now: 5, events: &events)
            }
            #expect(events == expectedEvents, "pieces \(lengths)")
            #expect(drain(session) == expectedOutput, "pieces \(lengths)")
            #expect(session.state == .ready)
        }
    }

    @Test("Without subscriptions the session is ready at CONNACK and sends no SUBSCRIBE")
    func noSubscriptions() throws {
        let session = MQTTClientSession(options: options([]))
        session.start(now: 0)
        _ = drain(session)
        #expect(try feed(session, "20 02 01 00", at: 5) == [.connected(sessionPresent: true)])
        #expect(session.state == .ready)
        #expect(drain(session) == "")
    }

    @Test("CONNECT carries the user name, password and session flag of the options")
    func connectWithCredentials() {
        var o = MQTTClientOptions(clientId: "dev", subscriptions: [])
        o.keepAliveSeconds = 0
        o.cleanSession = false
        o.username = "user"
        o.password = Array("pw".utf8)
        let session = MQTTClientSession(options: o)
        session.start(now: 0)
        #expect(drain(session) == hex(bytes("10 19 00 04 4D 51 54 54 04 C0 00 00 00 03 64 65 76 00 04 75 73 65 72 00 02 70 77")))
    }

    @Test("Incoming QoS 0 is not acknowledged; a QoS 1 duplicate is acknowledged and reported with DUP")
    func incomingPublishes() throws {
        let session = try readySession()
        #expect(try feed(session, "30 07 00 03 61 2F 62 68 69", at: 100) == [.message(MQTTPublish(topic: "a/b", payload: Array("hi".utf8)))])
        #expect(drain(session) == "")
        var dup = notification
        dup.duplicate = true
        #expect(try feed(session, "3A 24 00 1E " + notifyTopicHex + " 00 0A 7B 7D", at: 100) == [.message(dup)])
        #expect(drain(session) == "4002000a")
        // Twice the same message: twice reported and acknowledged (removing duplicates is the owner's job).
        #expect(try feed(session, notificationHex + notificationHex, at: 100) == [.message(notification), .message(notification)])
        #expect(drain(session) == "4002000a4002000a")
    }

    // MARK: Refusals

    @Test("A refused CONNACK ends the session with the reason and what to check", arguments: [1, 2, 3, 4, 5] as [UInt8])
    func refusedConnack(code: UInt8) {
        let session = MQTTClientSession(options: options())
        session.start(now: 0)
        let f = failure { () throws(MQTTClientFailure) in _ = try feed(session, "20 02 00 0\(code)", at: 1) }
        #expect(f == .refused(returnCode: code))
        #expect(session.state == .finished)
        #expect(session.nextDeadline == nil)
        let text = f?.description ?? ""
        #expect(text.contains(MQTTPacket.connackReason(code)))
        #expect(text.contains("return code \(code)"))
        if code == 5 {
            #expect(text.contains("not authorized"))
            #expect(text.contains("certificate is active"))
            #expect(text.contains("iot:Connect"))
        }
        #expect(failure { () throws(MQTTClientFailure) in _ = try feed(session, "20 02 00 00", at: 2) } == .closed)
    }

    @Test("A refused subscription ends the session and names the filter and iot:Subscribe")
    func refusedSubscription() throws {
        let subscriptions = [MQTTSubscription(topicFilter: "a", qos: 0), notify]
        let session = MQTTClientSession(options: options(subscriptions))
        session.start(now: 0)
        _ = try feed(session, connackHex, at: 1)
        let f = failure { () throws(MQTTClientFailure) in _ = try feed(session, "90 04 00 01 00 80", at: 2) }
        #expect(f == .subscriptionRefused(topicFilter: notifyTopic))
        #expect(f?.description.contains("iot:Subscribe") == true)
        #expect(f?.description.contains(notifyTopic) == true)
        #expect(session.state == .finished)
    }

    @Test("Two filters granted: one event each, in order, with the granted QoS")
    func twoFiltersGranted() throws {
        let subscriptions = [MQTTSubscription(topicFilter: "a", qos: 0), notify]
        let session = MQTTClientSession(options: options(subscriptions))
        session.start(now: 0)
        _ = try feed(session, connackHex, at: 1)
        #expect(drain(session).hasSuffix(hex(bytes("00 01 61 00 00 1E " + notifyTopicHex + " 01"))))
        // The broker may grant less than asked (QoS 0 for QoS 1).
        #expect(try feed(session, "90 04 00 01 00 00", at: 2)
            == [.subscribed(subscriptions[0], grantedQoS: 0), .subscribed(notify, grantedQoS: 0)])
        #expect(session.state == .ready)
    }

    // MARK: Protocol violations

    /// A state reached by `setup`, then bytes from the broker, and the words the violation must contain.
    struct Violation: Sendable, CustomTestStringConvertible {
        var name: String
        /// "connecting", "subscribing" or "ready".
        var state: String
        var hex: String
        var mention: String
        var testDescription: String { name }
    }

    static let violations: [Violation] = [
        Violation(name: "PUBLISH before CONNACK", state: "connecting", hex: "30 03 00 01 61", mention: "PUBLISH arrived before CONNACK"),
        Violation(name: "PINGRESP before CONNACK", state: "connecting", hex: "D0 00", mention: "before CONNACK"),
        Violation(name: "SUBACK before CONNACK", state: "connecting", hex: "90 03 00 01 01", mention: "SUBACK arrived before CONNACK"),
        Violation(name: "a second CONNACK", state: "ready", hex: "20 02 00 00", mention: "second CONNACK"),
        Violation(name: "a second CONNACK while subscribing", state: "subscribing", hex: "20 02 00 00", mention: "second CONNACK"),
        Violation(name: "PINGRESP never asked for", state: "ready", hex: "D0 00", mention: "without a PINGREQ"),
        Violation(name: "SUBACK with another packet id", state: "subscribing", hex: "90 03 00 02 01", mention: "packet id 2, but the SUBSCRIBE has 1"),
        Violation(name: "SUBACK with two codes for one filter", state: "subscribing", hex: "90 04 00 01 01 01", mention: "2 return codes"),
        Violation(name: "SUBACK granting QoS 2 for QoS 1", state: "subscribing", hex: "90 03 00 01 02", mention: "grants QoS 2"),
        Violation(name: "SUBACK when nothing was subscribed", state: "ready", hex: "90 03 00 01 01", mention: "no SUBSCRIBE waiting"),
        Violation(name: "UNSUBACK", state: "ready", hex: "B0 02 00 01", mention: "never sends UNSUBSCRIBE"),
        Violation(name: "CONNECT from the broker", state: "ready", hex: "10 0F 00 04 4D 51 54 54 04 02 00 3C 00 03 67 77 31", mention: "CONNECT arrived from the broker"),
        Violation(name: "PINGREQ from the broker", state: "ready", hex: "C0 00", mention: "only clients send it"),
        Violation(name: "DISCONNECT from the broker", state: "ready", hex: "E0 00", mention: "DISCONNECT"),
        Violation(name: "SUBSCRIBE from the broker", state: "subscribing", hex: "82 06 00 05 00 01 61 01", mention: "SUBSCRIBE arrived"),
        Violation(name: "PUBREL (QoS 2)", state: "ready", hex: "62 02 00 01", mention: "QoS 2 is not supported"),
        Violation(name: "PUBLISH QoS 2", state: "ready", hex: "34 05 00 01 61 00 01", mention: "QoS 2 is not supported"),
        Violation(name: "malformed CONNACK", state: "connecting", hex: "20 03 00 00 00", mention: "remaining length of 3"),
        Violation(name: "a packet over maximumPacketLength", state: "ready", hex: "30 FF FF 07", mention: "limit of 131072 bytes"),
    ]

    @Test("Out-of-order and malformed packets from the broker end the session", arguments: violations)
    func violation(_ v: Violation) throws {
        let session = MQTTClientSession(options: options())
        session.start(now: 0)
        if v.state != "connecting" { _ = try feed(session, connackHex, at: 1) }
        if v.state == "ready" { _ = try feed(session, subackHex, at: 1) }
        _ = drain(session)
        let f = failure { () throws(MQTTClientFailure) in _ = try feed(session, v.hex, at: 2) }
        guard case .protocolViolation(let text)? = f else {
            Issue.record("expected a protocol violation, got \(f?.description ?? "nothing")")
            return
        }
        #expect(text.contains(v.mention), "\(text)")
        #expect(f!.description.hasPrefix("the MQTT broker broke the protocol: "))
        #expect(session.state == .finished)
        #expect(session.nextDeadline == nil)
        #expect(drain(session) == "")
        #expect(failure { () throws(MQTTClientFailure) in try session.tick(now: 1_000_000) } == nil)
        #expect(failure { () throws(MQTTClientFailure) in _ = try feed(session, "D0 00", at: 3) } == .closed)
    }

    @Test("Bytes before start are a violation")
    func bytesBeforeStart() {
        let session = MQTTClientSession(options: options())
        let f = failure { () throws(MQTTClientFailure) in _ = try feed(session, connackHex, at: 0) }
        #expect(f == .protocolViolation("bytes arrived before the session sent CONNECT (start was not called)"))
        #expect(session.state == .finished)
    }

    @Test("A PUBACK for an id not in flight is ignored")
    func unknownPuback() throws {
        let session = try readySession()
        #expect(try feed(session, "40 02 12 34", at: 50) == [])
        #expect(session.state == .ready)
    }

    // MARK: Keep-alive and timeouts

    @Test("PINGREQ after 3/4 of the keep-alive without sending; PINGRESP clears it")
    func keepAlive() throws {
        let session = try readySession(options([]))
        // CONNECT was queued at 0: the PINGREQ is due at 45 s.
        #expect(session.nextDeadline == 45_000)
        try session.tick(now: 44_999)
        #expect(drain(session) == "")
        try session.tick(now: 45_000)
        #expect(drain(session) == "c000")
        // Waiting for the PINGRESP: no second PINGREQ, a deadline 10 s on.
        #expect(session.nextDeadline == 55_000)
        try session.tick(now: 54_999)
        #expect(drain(session) == "")
        #expect(try feed(session, "D0 00", at: 45_100) == [])
        #expect(session.nextDeadline == 90_000)
        // A PUBLISH counts as sending; it takes the latest time the session was given.
        try session.tick(now: 60_000)
        #expect(try session.publish(topic: "t", payload: [], qos: 0, retain: false) == nil)
        #expect(drain(session) == "30030001" + "74")
        #expect(session.nextDeadline == 105_000)
        try session.tick(now: 104_999)
        #expect(drain(session) == "")
        try session.tick(now: 105_000)
        #expect(drain(session) == "c000")
        // A late tick sends one PINGREQ, not one per missed period.
        #expect(try feed(session, "D0 00", at: 105_001) == [])
        try session.tick(now: 1_000_000)
        #expect(drain(session) == "c000")
        try session.tick(now: 1_000_001)
        #expect(drain(session) == "")
        // Receiving alone does not put the PINGREQ off: the broker counts what we send.
        #expect(try feed(session, "D0 00", at: 1_000_002) == [])
        _ = try feed(session, "30 03 00 01 61", at: 1_044_000)
        try session.tick(now: 1_045_000)
        #expect(drain(session) == "c000")
    }

    @Test("Keep-alive 0 sends no PINGREQ and needs no timer once ready")
    func keepAliveOff() throws {
        let session = try readySession(options(keepAlive: 0))
        #expect(session.nextDeadline == nil)
        try session.tick(now: 10_000_000)
        #expect(drain(session) == "")
    }

    @Test("No PINGRESP within the response timeout ends the session")
    func pingrespTimeout() throws {
        let session = try readySession(options([], keepAlive: 4))
        try session.tick(now: 3_000)
        #expect(drain(session) == "c000")
        #expect(session.nextDeadline == 13_000)
        let f = failure { () throws(MQTTClientFailure) in try session.tick(now: 13_000) }
        guard case .timeout(let text)? = f else { Issue.record("expected a timeout"); return }
        #expect(text.contains("no PINGRESP within 10000 ms"))
        #expect(session.state == .finished)
    }

    @Test("No CONNACK within the response timeout ends the session")
    func connackTimeout() {
        var o = options()
        o.responseTimeoutMilliseconds = 5_000
        let session = MQTTClientSession(options: o)
        session.start(now: 100)
        #expect(session.nextDeadline == 5_100)
        #expect(failure { () throws(MQTTClientFailure) in try session.tick(now: 5_099) } == nil)
        // No PINGREQ before CONNACK, even past 3/4 of a short keep-alive.
        #expect(drain(session) == hex(bytes(connectHex)))
        let f = failure { () throws(MQTTClientFailure) in try session.tick(now: 5_100) }
        guard case .timeout(let text)? = f else { Issue.record("expected a timeout"); return }
        #expect(text.contains("no CONNACK within 5000 ms"))
        #expect(session.state == .finished)
    }

    @Test("No SUBACK within the response timeout ends the session and names the filter")
    func subackTimeout() throws {
        let session = MQTTClientSession(options: options())
        session.start(now: 0)
        _ = try feed(session, connackHex, at: 2_000)
        #expect(session.nextDeadline == 12_000)
        #expect(failure { () throws(MQTTClientFailure) in try session.tick(now: 11_999) } == nil)
        let f = failure { () throws(MQTTClientFailure) in try session.tick(now: 12_000) }
        guard case .timeout(let text)? = f else { Issue.record("expected a timeout"); return }
        #expect(text.contains("no SUBACK"))
        #expect(text.contains(notifyTopic))
    }

    @Test("A PINGREQ can go out while the SUBACK is awaited")
    func pingWhileSubscribing() throws {
        var o = options(keepAlive: 2)
        o.responseTimeoutMilliseconds = 60_000
        let session = MQTTClientSession(options: o)
        session.start(now: 0)
        _ = try feed(session, connackHex, at: 10)
        _ = drain(session)
        #expect(session.nextDeadline == 1_510)
        try session.tick(now: 1_510)
        #expect(drain(session) == "c000")
        #expect(try feed(session, "D0 00" + subackHex, at: 1_600) == [.subscribed(notify, grantedQoS: 1)])
        #expect(session.state == .ready)
    }

    // MARK: Publishing

    @Test("QoS 1 PUBLISH: packet id after the SUBSCRIBE's, exact bytes, PUBACK reported")
    func publishQoS1() throws {
        let session = try readySession()
        let id = try session.publish(topic: notifyTopic, payload: Array("{}".utf8), qos: 1, retain: false)
        #expect(id == 2)
        #expect(session.unacknowledgedCount == 1)
        #expect(drain(session) == hex(bytes("32 24 00 1E " + notifyTopicHex + " 00 02 7B 7D")))
        #expect(try feed(session, "40 02 00 02", at: 20) == [.published(packetId: 2)])
        #expect(session.unacknowledgedCount == 0)
        // The same PUBACK again finds nothing and is ignored.
        #expect(try feed(session, "40 02 00 02", at: 21) == [])
        #expect(try session.publish(topic: "t", payload: [9], qos: 0, retain: true) == nil)
        #expect(drain(session) == "310400017409")
    }

    @Test("resendUnacknowledged sends what waits for a PUBACK again, oldest first, with DUP")
    func resend() throws {
        let session = try readySession(options([]))
        #expect(try session.publish(topic: "t", payload: [1], qos: 1, retain: false) == 1)
        #expect(try session.publish(topic: "u", payload: [2], qos: 1, retain: true) == 2)
        #expect(drain(session) == "3206000174000101" + "3306000175000202")
        try session.resendUnacknowledged()
        #expect(drain(session) == "3a06000174000101" + "3b06000175000202")
        #expect(try feed(session, "40 02 00 01 40 02 00 01", at: 30) == [.published(packetId: 1)])
        try session.resendUnacknowledged()
        #expect(drain(session) == "3b06000175000202")
    }

    @Test("Packet ids run 1...65535, wrap, and skip the ones in use")
    func packetIdWrap() throws {
        var o = options([])
        o.maximumUnacknowledged = 10
        let session = try readySession(o)
        #expect(try session.publish(topic: "t", payload: [], qos: 1, retain: false) == 1)
        var events: [MQTTClientEvent] = []
        for expected in 2...65_535 {
            let id = try #require(try session.publish(topic: "t", payload: [], qos: 1, retain: false))
            if Int(id) != expected { Issue.record("id \(id), expected \(expected)"); return }
            let ack: [UInt8] = [0x40, 0x02, UInt8(id >> 8), UInt8(id & 0xFF)]
            try session.receive(ack, now: 40, events: &events)
            session.consumeOutput(session.pendingOutput.count)
        }
        #expect(events.count == 65_534)
        // 1 is still in flight: the next id wraps past it.
        #expect(try session.publish(topic: "t", payload: [], qos: 1, retain: false) == 2)
        #expect(try feed(session, "40 02 00 01", at: 50) == [.published(packetId: 1)])
        #expect(try session.publish(topic: "t", payload: [], qos: 1, retain: false) == 3)
        #expect(session.unacknowledgedCount == 2)
    }

    @Test("Publishing is refused outside ready and for invalid packets, without ending the session")
    func publishRefusals() throws {
        let session = MQTTClientSession(options: options())
        session.start(now: 0)
        let early = failure { () throws(MQTTClientFailure) in _ = try session.publish(topic: "t", payload: [], qos: 0, retain: false) }
        #expect(early == .invalidRequest("cannot publish to \"t\": the MQTT session is connecting, not ready"))
        #expect(session.state == .connecting)

        let ready = try readySession()
        for (topic, qos) in [("a/+", 0), ("", 1), ("t", 2), ("t", 3)] as [(String, UInt8)] {
            let f = failure { () throws(MQTTClientFailure) in _ = try ready.publish(topic: topic, payload: [], qos: qos, retain: false) }
            guard case .invalidRequest(let text)? = f else { Issue.record("\(topic) QoS \(qos) was not refused"); continue }
            #expect(text.hasPrefix("MQTT"), "\(text)")
            #expect(ready.state == .ready)
        }
        #expect(drain(ready) == "")
        #expect(ready.unacknowledgedCount == 0)
        // The refused QoS 1 PUBLISH used no packet id.
        #expect(try ready.publish(topic: "t", payload: [], qos: 1, retain: false) == 2)
    }

    @Test("The unacknowledged window is bounded")
    func unacknowledgedWindow() throws {
        var o = options([])
        o.maximumUnacknowledged = 2
        let session = try readySession(o)
        #expect(try session.publish(topic: "t", payload: [], qos: 1, retain: false) == 1)
        #expect(try session.publish(topic: "t", payload: [], qos: 1, retain: false) == 2)
        let f = failure { () throws(MQTTClientFailure) in _ = try session.publish(topic: "t", payload: [], qos: 1, retain: false) }
        guard case .queueFull(let text)? = f else { Issue.record("expected queueFull"); return }
        #expect(text.contains("maximumUnacknowledged"))
        // QoS 0 is not limited by the window.
        #expect(try session.publish(topic: "t", payload: [], qos: 0, retain: false) == nil)
        _ = try feed(session, "40 02 00 01", at: 5)
        #expect(try session.publish(topic: "t", payload: [], qos: 1, retain: false) == 3)
    }

    // MARK: Output back-pressure

    @Test("Partial consumeOutput keeps the rest in order; a full queue refuses PUBLISH until written")
    func backPressure() throws {
        var o = options([])
        o.maximumOutputLength = 32
        let session = try readySession(o)
        // 2 + 2 + 1 + 20 = 25 bytes.
        let payload = [UInt8](0..<20)
        let first = "3017000174" + hex(payload)
        #expect(try session.publish(topic: "t", payload: payload, qos: 0, retain: false) == nil)
        #expect(hex(Array(session.pendingOutput)) == first)
        // 25 + 25 > 32: refused, nothing queued, the session goes on.
        let f = failure { () throws(MQTTClientFailure) in _ = try session.publish(topic: "t", payload: payload, qos: 0, retain: false) }
        guard case .queueFull(let text)? = f else { Issue.record("expected queueFull"); return }
        #expect(text.contains("limit 32"))
        #expect(session.state == .ready)
        #expect(hex(Array(session.pendingOutput)) == first)
        // The owner wrote 10 bytes: the other 15 stay, in order. 15 + 25 > 32 still.
        session.consumeOutput(10)
        #expect(hex(Array(session.pendingOutput)) == String(first.dropFirst(20)))
        #expect(failure { () throws(MQTTClientFailure) in _ = try session.publish(topic: "t", payload: payload, qos: 0, retain: false) } != nil)
        session.consumeOutput(8)
        // 7 + 25 = 32 fits.
        #expect(try session.publish(topic: "t", payload: payload, qos: 0, retain: false) == nil)
        #expect(hex(Array(session.pendingOutput)) == String(first.dropFirst(36)) + first)
        session.consumeOutput(0)
        session.consumeOutput(session.pendingOutput.count)
        #expect(session.pendingOutput.count == 0)
        // A PUBLISH that can never fit is an invalid request, not a full queue.
        let huge = failure { () throws(MQTTClientFailure) in _ = try session.publish(topic: "t", payload: [UInt8](repeating: 1, count: 40), qos: 0, retain: false) }
        guard case .invalidRequest(let hugeText)? = huge else { Issue.record("expected invalidRequest"); return }
        #expect(hugeText.contains("maximumOutputLength"))
    }

    @Test("PUBACKs may pass the output limit up to twice it; past that the session fails")
    func controlOverflow() throws {
        var o = options([])
        o.maximumOutputLength = 16
        let session = try readySession(o)
        // Eight PUBACKs (32 bytes) fit under 2 × 16; the ninth does not.
        for id in 1...8 {
            _ = try feed(session, "32 05 00 01 74 00 0\(id)", at: 5)
        }
        #expect(session.pendingOutput.count == 32)
        let f = failure { () throws(MQTTClientFailure) in _ = try feed(session, "32 05 00 01 74 00 09", at: 5) }
        guard case .queueFull(let text)? = f else { Issue.record("expected queueFull"); return }
        #expect(text.contains("not being written"))
        #expect(session.state == .finished)
    }

    @Test("Output survives growth and compaction of its buffer")
    func outputGrowth() throws {
        let session = try readySession(options([]))
        var expected: [UInt8] = []
        for round in 0..<40 {
            let payload = [UInt8](repeating: UInt8(round), count: round * 37)
            _ = try session.publish(topic: "t", payload: payload, qos: 0, retain: false)
            expected += try MQTTPacket.publish(MQTTPublish(topic: "t", payload: payload)).encoded()
            // Take a varying part each round, so the pending bytes move around.
            let n = min(session.pendingOutput.count, round * 29)
            #expect(Array(session.pendingOutput) == expected, "round \(round)")
            session.consumeOutput(n)
            expected.removeFirst(n)
        }
        #expect(Array(session.pendingOutput) == expected)
    }

    // MARK: Starting and stopping

    @Test("Invalid options: nothing is sent and the first tick throws the reason")
    func invalidOptions() {
        let o = options([MQTTSubscription(topicFilter: "a/#/b", qos: 1)])
        let checked = failure { () throws(MQTTClientFailure) in try o.check() }
        guard case .invalidRequest(let text)? = checked else { Issue.record("check accepted an invalid filter"); return }
        #expect(text.contains("a/#/b"))
        let session = MQTTClientSession(options: o)
        session.start(now: 7)
        #expect(session.state == .finished)
        #expect(drain(session) == "")
        #expect(session.nextDeadline == 7)
        #expect(failure { () throws(MQTTClientFailure) in try session.tick(now: 7) } == checked)
        #expect(session.nextDeadline == nil)
        #expect(failure { () throws(MQTTClientFailure) in try options().check() } == nil)
        var nul = options()
        nul.clientId = "g\u{0}"
        #expect(failure { () throws(MQTTClientFailure) in try nul.check() } != nil)
    }

    @Test("disconnect before start finishes; start twice does nothing more")
    func startAndStop() {
        let idle = MQTTClientSession(options: options())
        idle.disconnect()
        #expect(idle.state == .finished)
        #expect(drain(idle) == "")
        idle.start(now: 0)
        #expect(idle.state == .finished)

        let session = MQTTClientSession(options: options())
        session.start(now: 0)
        session.start(now: 5)
        #expect(drain(session) == hex(bytes(connectHex)))
        session.disconnect()
        session.disconnect()
        #expect(drain(session) == "e000")
        #expect(session.state == .disconnecting)
    }

    @Test("Failure texts say what to do")
    func failureTexts() {
        #expect(MQTTClientFailure.refused(returnCode: 4).description.contains("user name and password"))
        #expect(MQTTClientFailure.refused(returnCode: 2).description.contains("client id"))
        #expect(MQTTClientFailure.closed.description == "the MQTT connection was closed")
        #expect(MQTTClientFailure.subscriptionRefused(topicFilter: "x/#").description.contains("\"x/#\""))
    }
}
