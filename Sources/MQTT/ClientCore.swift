import Dispatch
import Logging
import Synchronization

/// The client's shared state: connection state, subscriptions, operations
/// waiting for an acknowledgement, and the streams. It is the sink of
/// libmosquitto's callbacks, which only record into it and return.
///
/// Locking rule: the mutex is never held while calling libmosquitto, and no
/// continuation is finished while it is held (an `onTermination` handler could
/// need it again).
final class ClientCore: MosquittoEventSink, Sendable {
    enum AcknowledgementKind: Sendable { case publish, subscribe, unsubscribe }

    /// How many QoS 0 messages may wait in libmosquitto's memory, not yet written
    /// to the socket, before `publish` waits for the loop thread to catch up.
    static let unsentQoS0Limit = 1000

    private struct Waiter {
        var kind: AcknowledgementKind
        var continuation: CheckedContinuation<Void, any Error>?
        /// One of a batch's publishes (`acknowledgements(mids:)`): its place in the batch.
        var batch: (AcknowledgementBatch, Int)?

        /// The acknowledgement (or its failure) came: what to resume, outside the lock.
        func settle(_ result: Result<Void, MQTTError>) -> (@Sendable () -> Void)? {
            if let continuation { return { continuation.resume(with: result.mapError { $0 as any Error }) } }
            guard let (batch, index) = batch else { return nil }
            return batch.settle(index, result)
        }
    }

    /// A batch of publishes waited for together: its waiter is resumed once, when the last
    /// acknowledgement came (one wake-up per batch instead of one per message). Guarded by the
    /// core's lock.
    private final class AcknowledgementBatch: @unchecked Sendable {
        var remaining: Int
        var outcomes: [MQTTError?]
        var continuation: CheckedContinuation<[MQTTError?], Never>?

        init(count: Int) {
            remaining = count
            outcomes = Array(repeating: nil, count: count)
        }

        func settle(_ index: Int, _ result: Result<Void, MQTTError>) -> (@Sendable () -> Void)? {
            if case .failure(let error) = result { outcomes[index] = error }
            remaining -= 1
            guard remaining == 0, let continuation else { return nil }
            self.continuation = nil
            let outcomes = outcomes
            return { continuation.resume(returning: outcomes) }
        }
    }

    enum StopRequest { case notStarted, running, alreadyStopping }

    private struct State {
        var connection: MQTTConnectionState = .idle
        var started = false
        var stopRequested = false
        /// Stop without DISCONNECT (as a crash would): the broker publishes the Last Will.
        var abandon = false
        var finished = false
        /// Topic filters in subscription order, restored after every connect.
        var subscriptions: [(filter: String, qos: MQTTQoS)] = []
        var resubscribeRequested = false
        /// Per connection: whether CONNACK accepted it, and the refusal if it did not.
        var connectedThisConnection = false
        var refusal: MQTTError?
        var disconnectReason: MQTTError?
        var lastError: MQTTError?
        /// Callers waiting for an acknowledgement, by message id. libmosquitto hands
        /// out ids from one 16-bit counter for every publish (QoS 0 too), subscribe
        /// and unsubscribe without checking which are still in use, so an id can
        /// repeat while an older operation waits: never overwrite, queue.
        var waiters: [Int32: [Waiter]] = [:]
        /// Callbacks that nobody waits for, by id: QoS 0 messages not yet written
        /// (libmosquitto's publish callback fires once one is) and restored subscriptions.
        var unwaited: [Int32: Int] = [:]
        /// Acknowledgements that arrived before the caller registered for them.
        var early: [Int32: Result<Void, MQTTError>] = [:]
        /// Goes up at every disconnect: a record made for an older connection is dropped.
        var connectionEpoch = 0
        var nextObserverID = 0
        var stateObservers: [Int: AsyncStream<MQTTConnectionState>.Continuation] = [:]
        var connectWaiters: [Int: CheckedContinuation<Void, any Error>] = [:]
        var finishWaiters: [CheckedContinuation<Void, Never>] = []
        /// QoS 0 messages handed to libmosquitto and not yet written.
        var unsentQoS0 = 0
        var roomWaiters: [CheckedContinuation<Void, Never>] = []
    }

    let configuration: MQTTConfiguration
    let logger: Logger
    private let state = Mutex(State())
    private let messageContinuation: AsyncStream<[MQTTMessage]>.Continuation
    /// Messages received during the current loop iteration; touched only on the loop thread.
    private let inbox = LoopThreadInbox()
    /// Wakes the loop thread from its backoff sleep when a stop is requested.
    private let wakeup = DispatchSemaphore(value: 0)
    /// Wakes the loop thread out of `poll` when a packet was queued or a stop requested.
    let loopWake: LoopWake

    init(configuration: MQTTConfiguration, logger: Logger, messages: AsyncStream<[MQTTMessage]>.Continuation) throws(MQTTError) {
        self.configuration = configuration
        self.loopWake = try LoopWake()
        var logger = logger
        logger[metadataKey: "mqtt.client"] = "\(configuration.clientID.isEmpty ? "-" : configuration.clientID)"
        logger[metadataKey: "mqtt.broker"] = "\(configuration.broker)"
        self.logger = logger
        self.messageContinuation = messages
    }

    // MARK: Lifecycle

    var currentState: MQTTConnectionState { state.withLock { $0.connection } }
    var stopRequested: Bool { state.withLock { $0.stopRequested } }

    /// The loop thread is inside libmosquitto's (blocking) TCP connect: an address that drops
    /// packets holds it there for the kernel's connect timeout, about two minutes.
    private let connecting = Mutex(false)
    var isInConnectCall: Bool { connecting.withLock { $0 } }
    func setInConnectCall(_ value: Bool) { connecting.withLock { $0 = value } }
    var isFinished: Bool { state.withLock { $0.finished } }

    /// Returns true the first time, when the loop thread should be started.
    func markStarted() -> Bool {
        state.withLock { s in
            guard !s.started, !s.stopRequested else { return false }
            s.started = true
            return true
        }
    }

    var abandoning: Bool { state.withLock { $0.abandon } }

    func requestStop(abandon: Bool = false) -> StopRequest {
        state.withLock { s in
            if s.stopRequested { return .alreadyStopping }
            s.stopRequested = true
            s.abandon = abandon
            return s.started ? .running : .notStarted
        }
    }

    func wakeLoop() {
        wakeup.signal()
        loopWake.force()
    }

    func sleepUnlessWoken(_ delay: Duration) {
        let nanoseconds = Int(delay.components.seconds) * 1_000_000_000 + Int(delay.components.attoseconds / 1_000_000_000)
        _ = wakeup.wait(timeout: .now() + .nanoseconds(nanoseconds))
    }

    /// The last step of the shutdown: everything waiting fails or finishes.
    func finish() {
        let (waiters, connectWaiters, observers, finishWaiters, roomWaiters) = state.withLock { s in
            s.finished = true
            s.stopRequested = true
            s.connection = .stopped
            let result = (
                s.waiters.values.flatMap { $0 }.compactMap { $0.settle(.failure(.shutdown)) }, Array(s.connectWaiters.values),
                Array(s.stateObservers.values), s.finishWaiters, s.roomWaiters
            )
            s.waiters = [:]
            s.unwaited = [:]
            s.early = [:]
            s.connectWaiters = [:]
            s.stateObservers = [:]
            s.finishWaiters = []
            s.roomWaiters = []
            s.unsentQoS0 = 0
            return result
        }
        for waiter in waiters { waiter() }
        for waiter in connectWaiters { waiter.resume(throwing: MQTTError.shutdown) }
        for observer in observers {
            observer.yield(.stopped)
            observer.finish()
        }
        deliverMessages()
        messageContinuation.finish()
        for waiter in roomWaiters { waiter.resume() }
        for waiter in finishWaiters { waiter.resume() }
        logger.debug("MQTT client stopped")
    }

    func waitUntilFinished() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let done = state.withLock { s in
                if s.finished { return true }
                s.finishWaiters.append(continuation)
                return false
            }
            if done { continuation.resume() }
        }
    }

    // MARK: Connection state

    /// Sets the state and tells every observer (outside the lock, in order: all
    /// state changes happen on the loop thread).
    func setState(_ new: MQTTConnectionState) {
        let observers = state.withLock { s -> [AsyncStream<MQTTConnectionState>.Continuation] in
            guard !s.finished, s.connection != new else { return [] }
            s.connection = new
            if case .connecting = new {
                s.connectedThisConnection = false
                s.refusal = nil
                s.disconnectReason = nil
            }
            return Array(s.stateObservers.values)
        }
        for observer in observers { observer.yield(new) }
    }

    func makeStateStream() -> AsyncStream<MQTTConnectionState> {
        let (stream, continuation) = AsyncStream<MQTTConnectionState>.makeStream(bufferingPolicy: .unbounded)
        let registered = state.withLock { s -> Bool in
            continuation.yield(s.connection)
            guard !s.finished else { return false }
            let id = s.nextObserverID
            s.nextObserverID += 1
            s.stateObservers[id] = continuation
            continuation.onTermination = { [weak self] _ in
                self?.state.withLock { _ = $0.stateObservers.removeValue(forKey: id) }
            }
            return true
        }
        if !registered { continuation.finish() }
        return stream
    }

    /// Waits for the first successful CONNACK; fails fast on a refusal that
    /// retrying will not fix, and with the last error at the timeout.
    func waitUntilConnected(timeout: Duration) async throws {
        let id = state.withLock { s -> Int in
            s.nextObserverID += 1
            return s.nextObserverID
        }
        let timer = Mutex<Task<Void, Never>?>(nil)
        defer { timer.withLock { $0?.cancel() } }
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            let immediate = state.withLock { s -> Result<Void, MQTTError>? in
                if s.finished || s.stopRequested { return .failure(.shutdown) }
                if s.connection.isConnected { return .success(()) }
                s.connectWaiters[id] = continuation
                return nil
            }
            if let immediate {
                continuation.resume(with: immediate)
                return
            }
            // Armed only once the waiter is registered, so a short timeout cannot miss it.
            timer.withLock {
                $0 = Task { [weak self] in
                    try? await Task.sleep(for: timeout)
                    guard !Task.isCancelled, let self else { return }
                    let (waiter, lastError) = self.state.withLock { s in
                        (s.connectWaiters.removeValue(forKey: id), s.lastError)
                    }
                    waiter?.resume(throwing: lastError ?? MQTTError.timeout("no connection to the broker within \(timeout)"))
                }
            }
        }
    }

    /// A connection attempt failed or an established connection ended.
    func attemptFailed(_ error: MQTTError) {
        let waiters = state.withLock { s -> [CheckedContinuation<Void, any Error>] in
            s.lastError = error
            guard !error.isTransient else { return [] }
            defer { s.connectWaiters = [:] }
            return Array(s.connectWaiters.values)
        }
        logger.info("MQTT connection attempt failed", metadata: ["error": "\(error)"])
        setState(.disconnected(reason: error))
        for waiter in waiters { waiter.resume(throwing: error) }
    }

    /// Called by the loop thread when `mosquitto_loop` reports the connection gone.
    func connectionEnded() -> (wasConnected: Bool, refusal: MQTTError?, reason: MQTTError?) {
        state.withLock { s in (s.connectedThisConnection, s.refusal, s.disconnectReason) }
    }

    /// Throws unless connected; returns the connection epoch the caller's packet belongs to.
    func checkCanSend() throws(MQTTError) -> Int {
        let (connection, epoch) = state.withLock { s -> (MQTTConnectionState?, Int) in
            (s.stopRequested ? nil : s.connection, s.connectionEpoch)
        }
        guard let connection else { throw .shutdown }
        guard connection.isConnected else { throw .noConnection }
        return epoch
    }

    // MARK: Subscriptions

    /// Records a subscription; returns whether it should be sent now (connected).
    func recordSubscription(filter: String, qos: MQTTQoS) throws(MQTTError) -> Bool {
        try state.withLock { s throws(MQTTError) -> Bool in
            if s.stopRequested { throw .shutdown }
            if let index = s.subscriptions.firstIndex(where: { $0.filter == filter }) {
                s.subscriptions[index].qos = qos
            } else {
                s.subscriptions.append((filter, qos))
            }
            guard s.connection.isConnected else {
                // The loop thread makes it right after the next CONNACK (or this one,
                // if CONNACK is being handled right now).
                s.resubscribeRequested = true
                return false
            }
            return true
        }
    }

    func forgetSubscription(filter: String) {
        state.withLock { s in s.subscriptions.removeAll { $0.filter == filter } }
    }

    func forgetSubscriptionIfConnected(filter: String) throws(MQTTError) -> Bool {
        try state.withLock { s throws(MQTTError) -> Bool in
            if s.stopRequested { throw .shutdown }
            s.subscriptions.removeAll { $0.filter == filter }
            return s.connection.isConnected
        }
    }

    func takeResubscribeRequest() -> [(filter: String, qos: MQTTQoS)]? {
        state.withLock { s in
            guard s.resubscribeRequested, s.connection.isConnected else { return nil }
            s.resubscribeRequested = false
            return s.subscriptions
        }
    }

    // MARK: Acknowledgements

    /// Waits for the PUBACK/SUBACK/UNSUBACK of `mid` (which may already have come).
    func acknowledgement(mid: Int32, kind: AcknowledgementKind) async throws {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            let immediate = state.withLock { s -> Result<Void, MQTTError>? in
                if let result = s.early.removeValue(forKey: mid) { return result }
                if s.finished { return .failure(.shutdown) }
                s.waiters[mid, default: []].append(Waiter(kind: kind, continuation: continuation))
                return nil
            }
            if let immediate { continuation.resume(with: immediate) }
        }
    }

    /// Waits for the PUBACKs of several publishes (some may already have come); each one's
    /// failure, in the same order. The caller is woken once, when the last has come.
    func acknowledgements(mids: [Int32]) async -> [MQTTError?] {
        guard !mids.isEmpty else { return [] }
        return await withCheckedContinuation { (continuation: CheckedContinuation<[MQTTError?], Never>) in
            let done = state.withLock { s -> [MQTTError?]? in
                let batch = AcknowledgementBatch(count: mids.count)
                for (index, mid) in mids.enumerated() {
                    if let result = s.early.removeValue(forKey: mid) {
                        _ = batch.settle(index, result)
                    } else if s.finished {
                        _ = batch.settle(index, .failure(.shutdown))
                    } else {
                        s.waiters[mid, default: []].append(Waiter(kind: .publish, batch: (batch, index)))
                    }
                }
                if batch.remaining == 0 { return batch.outcomes }
                batch.continuation = continuation
                return nil
            }
            if let done { continuation.resume(returning: done) }
        }
    }

    /// Records a QoS 0 message handed to libmosquitto during connection `epoch`;
    /// libmosquitto's publish callback releases it once written. Returns whether
    /// the publisher should wait for room (too many still unwritten).
    func recordUnsentQoS0(mid: Int32, epoch: Int) -> Bool {
        state.withLock { s in
            guard s.early.removeValue(forKey: mid) == nil else { return false }
            // The connection it was queued on is gone: libmosquitto dropped it unsent.
            guard epoch == s.connectionEpoch else { return false }
            s.unwaited[mid, default: 0] += 1
            s.unsentQoS0 += 1
            return s.unsentQoS0 > Self.unsentQoS0Limit
        }
    }

    /// Waits until the loop thread has written enough QoS 0 messages: bounded
    /// memory, and a publisher that cannot outrun the socket and starve the broker.
    func waitForRoom() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let ready = state.withLock { s -> Bool in
                if s.finished || s.unsentQoS0 <= Self.unsentQoS0Limit / 2 { return true }
                s.roomWaiters.append(continuation)
                return false
            }
            if ready { continuation.resume() }
        }
    }

    /// Nobody waits for this `mid` (a restored subscription): drop its acknowledgement.
    func ignoreAcknowledgement(mid: Int32) {
        state.withLock { s in
            if s.early.removeValue(forKey: mid) == nil {
                s.unwaited[mid, default: 0] += 1
            }
        }
    }

    // MARK: MosquittoEventSink (loop thread, inside libmosquitto's callback lock)

    func mosquittoConnected(sessionPresent: Bool) {
        state.withLock { s in
            s.connectedThisConnection = true
            s.resubscribeRequested = s.resubscribeRequested || !s.subscriptions.isEmpty
            s.lastError = nil
        }
        logger.info("MQTT connected", metadata: ["sessionPresent": "\(sessionPresent)"])
        setState(.connected(sessionPresent: sessionPresent))
        let waiters = state.withLock { s in
            defer { s.connectWaiters = [:] }
            return Array(s.connectWaiters.values)
        }
        for waiter in waiters { waiter.resume() }
    }

    func mosquittoConnectRefused(_ error: MQTTError) {
        state.withLock { s in s.refusal = error }
    }

    func mosquittoDisconnected(_ reason: MQTTError?) {
        // Subscribe/unsubscribe requests in flight are not resent by the library:
        // their waiters are released (subscriptions are restored on reconnect).
        // QoS 1 publishes stay pending: libmosquitto resends them after reconnecting.
        let (released, room, effective) = state.withLock {
            s -> ([CheckedContinuation<Void, any Error>], [CheckedContinuation<Void, Never>], MQTTError??) in
            // libmosquitto may report one connection's end twice (a broker DISCONNECT,
            // then a read on the closed socket): the first report, or the CONNACK
            // refusal, is the reason.
            let first = s.connection.isConnected || s.connection == .connecting
            if first { s.disconnectReason = s.refusal ?? reason }
            s.connectionEpoch &+= 1
            var released: [CheckedContinuation<Void, any Error>] = []
            for (mid, queue) in s.waiters {
                let keep = queue.filter { $0.kind == .publish }
                released += queue.filter { $0.kind != .publish }.compactMap(\.continuation)
                s.waiters[mid] = keep.isEmpty ? nil : keep
            }
            s.unwaited = [:]
            s.unsentQoS0 = 0  // libmosquitto drops unwritten QoS 0 messages with the connection
            let room = s.roomWaiters
            s.roomWaiters = []
            return (released, room, first ? .some(s.disconnectReason) : nil)
        }
        for continuation in released { continuation.resume() }
        for continuation in room { continuation.resume() }
        if let effective { setState(.disconnected(reason: effective)) }
    }

    func mosquittoAcknowledged(mid: Int32, result: Result<Void, MQTTError>) {
        inbox.events &+= 1
        var room: [CheckedContinuation<Void, Never>] = []
        let resume = state.withLock { s -> (@Sendable () -> Void)? in
            // An id shared with an unwritten QoS 0 message: that message's write
            // callback comes promptly, so it takes this one first.
            if let count = s.unwaited[mid] {
                s.unwaited[mid] = count > 1 ? count - 1 : nil
                if s.unsentQoS0 > 0 { s.unsentQoS0 -= 1 }
                if !s.roomWaiters.isEmpty, s.unsentQoS0 <= Self.unsentQoS0Limit / 2 {
                    room = s.roomWaiters
                    s.roomWaiters = []
                }
                return nil
            }
            if var queue = s.waiters[mid], !queue.isEmpty {
                let waiter = queue.removeFirst()
                s.waiters[mid] = queue.isEmpty ? nil : queue
                return waiter.settle(result)
            }
            s.early[mid] = result
            return nil
        }
        for waiter in room { waiter.resume() }
        resume?()
    }

    func mosquittoMessage(_ message: MQTTMessage) {
        inbox.messages.append(message)
        inbox.events &+= 1
    }

    /// Counts callbacks that consumed an incoming packet (loop thread only), so the
    /// loop can tell whether one more read made progress.
    var loopEvents: Int { inbox.events }

    /// Batches handed to the consumer so far (read racily; for benchmarks).
    var deliveredBatches: Int { inbox.batches }

    /// Passes of the loop thread over a connection so far (read racily; for tests and diagnostics).
    var loopPasses: Int { inbox.passes }

    /// Counts one pass of the loop thread (loop thread only).
    func countPass() { inbox.passes &+= 1 }

    /// Messages received and not yet handed on (loop thread only).
    var pendingMessageCount: Int { inbox.messages.count }

    /// Hands the messages of one loop iteration on as one batch (loop thread only).
    /// Batching spares the consumer a wake-up per message under load.
    func deliverMessages() {
        guard !inbox.messages.isEmpty else { return }
        messageContinuation.yield(inbox.messages)
        inbox.messages.removeAll(keepingCapacity: true)
        inbox.batches &+= 1
    }
}

/// The loop thread's buffer of received messages. Only the loop thread (inside
/// libmosquitto's callbacks and right after `mosquitto_loop`) touches it.
private final class LoopThreadInbox: @unchecked Sendable {
    var messages: [MQTTMessage] = []
    var events = 0
    var batches = 0
    var passes = 0
    init() { messages.reserveCapacity(64) }
}
