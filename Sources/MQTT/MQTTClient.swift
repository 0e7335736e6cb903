public import Logging
import Dispatch
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// An MQTT client over libmosquitto 2.0.
///
/// One client owns one libmosquitto handle and one loop thread of its own. The
/// loop thread connects, services the socket, restores subscriptions after every
/// (re)connect and reconnects with capped exponential backoff after any failure,
/// including a v5 CONNACK refusal (which would end libmosquitto's own loop thread).
///
/// ```swift
/// try await MQTTClient.withConnection(configuration, logger: logger) { client in
///     try await client.subscribe(to: "edgefleet/v1/fleet/#")
///     try await client.publish("edgefleet/v1/sites/a/status", payload: bytes, qos: .atLeastOnce, retain: true)
///     for await message in client.messages { ... }
/// }
/// ```
///
/// Publishing while disconnected throws `MQTTError.noConnection` and queues
/// nothing: callers that must not lose data keep their own spool. All methods may
/// be called from any task. `shutdown()` must be called once the client is no
/// longer needed (`withConnection` does it).
public final class MQTTClient: Sendable {
    public let configuration: MQTTConfiguration
    /// Every message received on the client's subscriptions, in arrival order.
    /// Meant for one consumer; it finishes when the client shuts down.
    public let messages: MQTTMessages

    private let core: ClientCore
    private let handle: MosquittoHandle

    /// Creates a client; nothing touches the network until `start()` or `connect()`.
    public init(configuration: MQTTConfiguration, logger: Logger) throws(MQTTError) {
        let (stream, continuation) = AsyncStream<[MQTTMessage]>.makeStream()
        let core = try ClientCore(configuration: configuration, logger: logger, messages: continuation)
        self.handle = try MosquittoHandle.make(configuration: configuration, sink: core)
        self.core = core
        self.messages = MQTTMessages(batches: stream)
        self.configuration = configuration
    }

    /// The version of libmosquitto in use, e.g. "2.0.11".
    public static var libraryVersion: String { MosquittoHandle.libraryVersion }

    /// How many batches of messages the loop thread has handed to `messages` so
    /// far (approximate while the client runs; for benchmarks and diagnostics).
    public var deliveredBatches: Int { core.deliveredBatches }

    /// How many times the loop thread has woken to service a connection so far (approximate
    /// while the client runs; for tests and diagnostics of an idle client's wake-ups).
    public var loopPasses: Int { core.loopPasses }

    /// The current state of the link to the broker.
    public var state: MQTTConnectionState { core.currentState }

    /// A stream of connection states, starting with the current one. Each call
    /// returns a new stream; it finishes when the client stops.
    public func stateUpdates() -> AsyncStream<MQTTConnectionState> { core.makeStateStream() }

    /// Starts the loop thread, which connects and stays connected until `shutdown()`.
    /// Calling it again does nothing.
    public func start() {
        guard core.markStarted() else { return }
        let handle = self.handle
        let core = self.core
        startThread(name: "mqtt-loop") { LoopDriver(handle: handle, core: core).run() }
    }

    /// Starts the client if needed and waits until the broker accepts the connection.
    ///
    /// Throws at once when the broker refuses (`notAuthorized`, `tls`, ...), and
    /// `timeout` (or the last transient error) when `timeout` passes first. The
    /// client keeps trying in the background either way until `shutdown()`.
    public func connect(timeout: Duration = .seconds(10)) async throws {
        start()
        try await core.waitUntilConnected(timeout: timeout)
    }

    /// Publishes a message. With QoS 0 it returns once the library has it; with
    /// QoS 1 once the broker acknowledged it (PUBACK), and throws the broker's
    /// refusal (for example `notAuthorized` from an ACL) if it refuses.
    ///
    /// Throws `noConnection` without queueing anything when the client is not
    /// connected. If the link drops after the message was handed over, the
    /// library resends it on reconnect and this call returns when it is acknowledged.
    public func publish(
        _ topic: String, payload: [UInt8], qos: MQTTQoS = .atMostOnce, retain: Bool = false,
        properties: MQTTPublishProperties = MQTTPublishProperties()
    ) async throws {
        guard qos != .exactlyOnce else { throw MQTTError.notSupported("QoS 2 is not used by EdgeFleet") }
        if qos == .atLeastOnce {
            let mid = try handOverAtLeastOnce(topic, payload: payload, retain: retain, properties: properties)
            core.loopWake.wake()
            try await core.acknowledgement(mid: mid, kind: .publish)
            return
        }
        if let error = MosquittoHandle.checkTopicName(topic) { throw error }
        let epoch = try core.checkCanSend()
        let (mid, error) = payload.withUnsafeBytes {
            handle.publish(topic: topic, payload: $0, qos: qos, retain: retain, properties: properties)
        }
        core.loopWake.wake()
        if let error { throw error }
        if mid != 0, core.recordUnsentQoS0(mid: mid, epoch: epoch) { await core.waitForRoom() }
    }

    /// Hands a QoS 1 message to libmosquitto (without waking the loop); returns its message id.
    private func handOverAtLeastOnce(_ topic: String, payload: [UInt8], retain: Bool, properties: MQTTPublishProperties) throws -> Int32 {
        if let error = MosquittoHandle.checkTopicName(topic) { throw error }
        _ = try core.checkCanSend()
        let (mid, error) = payload.withUnsafeBytes {
            handle.publish(topic: topic, payload: $0, qos: .atLeastOnce, retain: retain, properties: properties)
        }
        switch error {
        case nil: return mid
        case .noConnection? where mid != 0:
            // Lost the race with a disconnect: libmosquitto queued it and resends it after reconnecting.
            return mid
        case let error?: throw error
        }
    }

    /// Publishes several QoS 1 messages in the order given and then waits for all their
    /// acknowledgements: the broker gets them in this order (one client's QoS 1 messages keep
    /// their order), and the batch costs one round trip instead of one per message. Returns
    /// each message's outcome (`nil`: acknowledged), in the same order.
    public func publishInOrder(_ messages: [(topic: String, payload: [UInt8], retain: Bool)]) async -> [(any Error)?] {
        var outcomes: [(any Error)?] = Array(repeating: nil, count: messages.count)
        var pending: [(index: Int, mid: Int32)] = []
        for (index, message) in messages.enumerated() {
            do {
                pending.append((index, try handOverAtLeastOnce(message.topic, payload: message.payload, retain: message.retain, properties: MQTTPublishProperties())))
            } catch {
                outcomes[index] = error
            }
        }
        core.loopWake.wake()
        // Woken once for the batch, not once per acknowledgement.
        let acknowledged = await core.acknowledgements(mids: pending.map(\.mid))
        for ((index, _), failure) in zip(pending, acknowledged) where failure != nil { outcomes[index] = failure }
        return outcomes
    }

    /// Publishes a UTF-8 string.
    public func publish(
        _ topic: String, string: String, qos: MQTTQoS = .atMostOnce, retain: Bool = false,
        properties: MQTTPublishProperties = MQTTPublishProperties()
    ) async throws {
        try await publish(topic, payload: Array(string.utf8), qos: qos, retain: retain, properties: properties)
    }

    /// Subscribes to a topic filter. The subscription is remembered and restored
    /// after every reconnect. When connected, returns once the broker granted it
    /// (and throws its refusal); when not connected, returns at once and the
    /// subscription is made on the next connect.
    public func subscribe(to filter: String, qos: MQTTQoS = .atLeastOnce) async throws {
        if let error = MosquittoHandle.checkFilter(filter) { throw error }
        guard try core.recordSubscription(filter: filter, qos: qos) else { return }
        let (mid, error) = handle.subscribe(filter: filter, qos: qos)
        core.loopWake.wake()
        switch error {
        case nil: break
        case .noConnection?: return  // made on the next connect
        case let error?:
            core.forgetSubscription(filter: filter)
            throw error
        }
        do {
            try await core.acknowledgement(mid: mid, kind: .subscribe)
        } catch {
            core.forgetSubscription(filter: filter)
            throw error
        }
    }

    /// Removes a subscription; it is not restored again.
    public func unsubscribe(from filter: String) async throws {
        if let error = MosquittoHandle.checkFilter(filter) { throw error }
        guard try core.forgetSubscriptionIfConnected(filter: filter) else { return }
        let (mid, error) = handle.unsubscribe(filter: filter)
        core.loopWake.wake()
        switch error {
        case nil: try await core.acknowledgement(mid: mid, kind: .unsubscribe)
        case .noConnection?: return
        case let error?: throw error
        }
    }

    /// Disconnects cleanly (the broker drops the Last Will), stops the loop
    /// thread, destroys the handle and then frees the callback context. Pending
    /// operations fail with `MQTTError.shutdown`; `messages` and the state streams
    /// finish. Safe to call more than once and when the broker is gone.
    public func shutdown() async {
        await stop(abandon: false)
    }

    /// Ends the connection as a crash would: no DISCONNECT, the socket just closes, so the
    /// broker publishes the Last Will. For simulations and tests of what a dead client
    /// looks like to the others; otherwise as `shutdown()`.
    public func abandon() async {
        await stop(abandon: true)
    }

    private func stop(abandon: Bool) async {
        switch core.requestStop(abandon: abandon) {
        case .notStarted:
            handle.destroy()
            core.finish()
        case .running:
            // Wakes mosquitto_loop through its internal socket pair when connected;
            // the loop thread notices the stop request and finishes the sequence.
            core.wakeLoop()
            // A loop thread inside a TCP connect to an address that never answers would hold the
            // stop for the kernel's connect timeout (about two minutes): after 2 s it is left to
            // end by itself (its handle stays alive until it does; nothing was connected to close).
            let core = self.core
            let watchdog = Task.detached {
                try? await Task.sleep(for: .seconds(2))
                guard !Task.isCancelled, !core.isFinished, core.isInConnectCall else { return }
                core.logger.warning("a connection attempt is still waiting for the broker to answer; stopping without it")
                core.finish()
            }
            await core.waitUntilFinished()
            watchdog.cancel()
        case .alreadyStopping:
            await core.waitUntilFinished()
        }
    }

    /// Connects, runs `body` with the connected client, and shuts the client down
    /// when `body` returns or throws.
    public static func withConnection<Result>(
        _ configuration: MQTTConfiguration,
        logger: Logger,
        timeout: Duration = .seconds(10),
        isolation: isolated (any Actor)? = #isolation,
        _ body: (MQTTClient) async throws -> Result
    ) async throws -> Result {
        let client = try MQTTClient(configuration: configuration, logger: logger)
        do {
            try await client.connect(timeout: timeout)
            let result = try await body(client)
            await client.shutdown()
            return result
        } catch {
            await client.shutdown()
            throw error
        }
    }
}

// MARK: - The loop thread

/// Runs on the client's own thread: connect, service, back off, reconnect; and
/// at the end the ordered shutdown (disconnect, stop, destroy, free context).
private struct LoopDriver {
    let handle: MosquittoHandle
    let core: ClientCore

    /// How long one `mosquitto_loop` call may wait for traffic. Publishes from
    /// other threads wake it at once; this only bounds how late a stop request
    /// is noticed while no connection is up, and how often an idle client wakes
    /// (an idle aggregator's budget is 0.05% of a core).
    static let pollMilliseconds: Int32 = 1_000

    /// How long one pass may wait while connected: a quarter of the keepalive, and at least
    /// `pollMilliseconds`. Traffic, a publish and a stop wake the loop at once; what needs the
    /// clock is the keepalive: libmosquitto (`mosquitto_loop_misc`) sends PINGREQ once a keepalive
    /// has passed without traffic, so it goes out at most a quarter late, well within the broker's
    /// one and a half keepalives. Waking every second instead cost an idle connection a pass a
    /// second: 2,000 of them in a simulated fleet.
    static func connectedPollMilliseconds(keepAlive: Duration) -> Int32 {
        let quarter = keepAlive.components.seconds * 250 + keepAlive.components.attoseconds / 4_000_000_000_000_000
        return Int32(clamping: max(Int64(pollMilliseconds), quarter))
    }

    func run() {
        var firstAttempt = true
        var failures = 0
        var streaming = false
        // Several brokers: each attempt goes to `brokers[current]`; a failure moves to the next
        // at once, and only a whole round of failures waits for the backoff.
        let brokers = core.configuration.brokers
        var current = 0
        var switched = false
        let connectedPoll = Self.connectedPollMilliseconds(keepAlive: core.configuration.keepAlive)
        while !core.stopRequested {
            core.setState(.connecting)
            let attemptStarted = ContinuousClock.now
            // Reached without blocking first (see ConnectCheck): libmosquitto's TCP connect blocks.
            // Both count as a connect call for a stop's watchdog: the check's name lookup blocks too.
            let target = brokers[current]
            core.setInConnectCall(true)
            var connectError = ConnectCheck.reach(
                host: target.host, port: target.port, timeout: core.configuration.connectTimeout, stopRequested: { core.stopRequested })
            if connectError == nil {
                // The will (a new session, for the agent) only for a connection that goes ahead.
                if let provider = core.configuration.willProvider, let error = handle.replaceWill(provider()) {
                    core.logger.error("could not set the Last Will for this connection", metadata: ["error": "\(error)"])
                }
                connectError = brokers.count > 1 && (firstAttempt || switched) ? handle.connect(to: target)
                    : firstAttempt ? handle.connect() : handle.reconnect()
                firstAttempt = false
                switched = false
            }
            core.setInConnectCall(false)
            if core.stopRequested { break }
            if let connectError {
                failures += 1
                core.attemptFailed(connectError)
                if brokers.count > 1 {
                    current = (current + 1) % brokers.count
                    switched = true
                    core.logger.info("trying the next broker", metadata: ["broker": "\(brokers[current])", "error": "\(connectError)"])
                    if current != 0 {
                        core.sleepUnlessWoken(.milliseconds(100))
                        continue
                    }
                }
                backOff(failures: brokers.count > 1 ? failures / brokers.count : failures)
                continue
            }
            var loopError: MQTTError?
            while !core.stopRequested {
                let connected = core.currentState.isConnected
                var error = handle.loop(
                    timeoutMilliseconds: connected ? connectedPoll : Self.pollMilliseconds, wake: core.loopWake, handshaking: !connected)
                core.countPass()
                if error == nil { error = drain() }
                // While messages stream in (the previous pass had some too), gather
                // for up to a millisecond before waking the consumer: a task wake-up
                // and its context switches cost more than handling a message, and on
                // a small machine they take CPU from the broker. A lone message is
                // handed on at once.
                let gathered = core.pendingMessageCount
                if streaming, gathered > 0 {
                    var waits = 0
                    while error == nil, waits < Self.gatherWaits, core.pendingMessageCount < Self.gatherBatch {
                        usleep(Self.gatherMicroseconds)
                        error = drain()
                        waits += 1
                    }
                }
                streaming = gathered > 0
                core.deliverMessages()
                restoreSubscriptionsIfAsked()
                if let error {
                    loopError = error
                    break
                }
            }
            if core.stopRequested { break }
            let outcome = core.connectionEnded()
            // Only a connection that lasted resets the backoff: a broker that drops the
            // client right after CONNACK (a duplicate client id) must not see a reconnect
            // every few hundred milliseconds.
            let lasted = ContinuousClock.now - attemptStarted >= Self.stableConnection
            failures = outcome.wasConnected && lasted ? 1 : failures + 1
            let ended = outcome.refusal ?? outcome.reason ?? loopError ?? .connectionLost("socket closed")
            core.attemptFailed(ended)
            if brokers.count > 1 {
                current = (current + 1) % brokers.count
                switched = true
                core.logger.info("the broker connection ended; trying the next broker", metadata: ["broker": "\(brokers[current])", "error": "\(ended)"])
                if outcome.wasConnected || current != 0 {
                    core.sleepUnlessWoken(.milliseconds(100))
                    continue
                }
                backOff(failures: max(1, failures / brokers.count))
                continue
            }
            backOff(failures: failures)
        }
        finishShutdown()
    }

    /// Gathering a batch while messages stream: at most `gatherWaits` pauses of
    /// `gatherMicroseconds`, stopping once `gatherBatch` messages are waiting.
    static let gatherWaits = 4
    static let gatherMicroseconds: UInt32 = 250
    static let gatherBatch = 256

    /// A connection that stayed up this long resets the reconnect backoff.
    static let stableConnection: Duration = .seconds(10)

    /// How many extra packets one pass may read after `mosquitto_loop`.
    static let maximumDrain = 512

    /// `mosquitto_loop` reads one incoming QoS 0 packet per call, a select each.
    /// Under load more are already waiting: read on while each read consumed a
    /// packet (a callback ran), so that callbacks run back to back and messages
    /// go to the consumer in batches. Stops at the first read that found nothing
    /// complete, which costs one failed recv per pass instead of a select per packet.
    private func drain() -> MQTTError? {
        var before = core.loopEvents
        for _ in 0..<Self.maximumDrain {
            if let error = handle.readOnce() { return error }
            let after = core.loopEvents
            if after == before { return nil }
            before = after
        }
        return nil
    }

    /// Subscriptions are restored here, after `mosquitto_loop` returned, never
    /// from inside the connect callback.
    private func restoreSubscriptionsIfAsked() {
        guard let subscriptions = core.takeResubscribeRequest() else { return }
        for (filter, qos) in subscriptions {
            let (mid, error) = handle.subscribe(filter: filter, qos: qos)
            if let error {
                core.logger.warning("could not restore subscription", metadata: ["filter": "\(filter)", "error": "\(error)"])
            } else {
                core.ignoreAcknowledgement(mid: mid)
            }
        }
        if !subscriptions.isEmpty {
            core.logger.debug("restored subscriptions", metadata: ["count": "\(subscriptions.count)"])
        }
    }

    private func backOff(failures: Int) {
        guard !core.stopRequested else { return }
        let delay = core.configuration.reconnect.delay(afterFailures: failures, random: Double.random(in: 0..<1))
        core.logger.debug("reconnecting after backoff", metadata: ["delay": "\(delay)", "failures": "\(failures)"])
        core.sleepUnlessWoken(delay)
    }

    private func finishShutdown() {
        if core.currentState.isConnected && !core.abandoning {
            _ = handle.disconnect()
            // Let the loop write the DISCONNECT; libmosquitto closes the socket after it.
            for _ in 0..<20 where core.currentState.isConnected {
                let error = handle.loop(timeoutMilliseconds: 100, wake: core.loopWake, handshaking: false)
                core.deliverMessages()
                if error != nil { break }
            }
        }
        handle.destroy()
        core.finish()
    }
}

/// Starts a detached POSIX thread running `body`. (Foundation's `Thread` would
/// pull full Foundation into the agent; this keeps the MQTT module lean.)
private func startThread(name _: String, _ body: @escaping @Sendable () -> Void) {
    final class Box: Sendable {
        let body: @Sendable () -> Void
        init(_ body: @escaping @Sendable () -> Void) { self.body = body }
    }
    let box = Unmanaged.passRetained(Box(body)).toOpaque()
    #if canImport(Darwin)
    var thread: pthread_t?
    #else
    var thread = pthread_t()
    #endif
    let rc = pthread_create(
        &thread, nil,
        { argument in
            let box = Unmanaged<Box>.fromOpaque(argument!).takeRetainedValue()
            box.body()
            return nil
        }, box)
    precondition(rc == 0, "pthread_create failed: \(rc)")
    #if canImport(Darwin)
    pthread_detach(thread!)
    #else
    pthread_detach(thread)
    #endif
}
