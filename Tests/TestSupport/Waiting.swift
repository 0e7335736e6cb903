import Foundation
public import MQTT
import Synchronization

/// Runs `operation`, failing with a clear message if it takes longer than `limit`.
/// Used for waiting on an event; it never sleeps a test to green.
public func withTimeout<T: Sendable>(
    _ limit: Duration, _ what: String, _ operation: @escaping @Sendable () async throws -> T
) async throws -> T {
    try await withThrowingTaskGroup(of: T.self) { group in
        group.addTask { try await operation() }
        group.addTask {
            try await Task.sleep(for: limit)
            throw TestSupportError("timed out after \(limit) waiting for \(what)")
        }
        defer { group.cancelAll() }
        return try await group.next()!
    }
}

/// Waits until the client's state satisfies `predicate`.
public func waitForState(
    _ client: MQTTClient, timeout: Duration = .seconds(10), _ what: String,
    _ predicate: @escaping @Sendable (MQTTConnectionState) -> Bool
) async throws {
    try await withTimeout(timeout, what) {
        for await state in client.stateUpdates() where predicate(state) { return }
        throw TestSupportError("the client stopped before \(what)")
    }
}

/// Collects every message a client receives, so a test can wait for the ones it expects.
public final class MessageCollector: Sendable {
    private struct Waiter {
        var predicate: @Sendable (MQTTMessage) -> Bool
        var continuation: CheckedContinuation<MQTTMessage, any Error>
    }

    private struct State {
        var buffer: [MQTTMessage] = []
        var all: [MQTTMessage] = []
        var waiters: [Int: Waiter] = [:]
        var nextID = 0
    }

    private final class Storage: Sendable {
        let state = Mutex(State())
    }

    private let storage = Storage()
    private let task: Task<Void, Never>

    public init(_ client: MQTTClient) {
        let storage = self.storage
        task = Task {
            for await message in client.messages {
                let waiter = storage.state.withLock { s -> CheckedContinuation<MQTTMessage, any Error>? in
                    s.all.append(message)
                    if let (id, w) = s.waiters.first(where: { $0.value.predicate(message) }) {
                        s.waiters.removeValue(forKey: id)
                        return w.continuation
                    }
                    s.buffer.append(message)
                    return nil
                }
                waiter?.resume(returning: message)
            }
        }
    }

    deinit { task.cancel() }

    /// Every message received so far, in order.
    public var received: [MQTTMessage] { storage.state.withLock { $0.all } }

    /// The next message (not yet taken) matching `predicate`.
    public func next(
        timeout: Duration = .seconds(10), _ what: String = "a message",
        where predicate: @escaping @Sendable (MQTTMessage) -> Bool = { _ in true }
    ) async throws -> MQTTMessage {
        let storage = self.storage
        let id = storage.state.withLock { s in
            s.nextID += 1
            return s.nextID
        }
        let timer = Task {
            try? await Task.sleep(for: timeout)
            guard !Task.isCancelled else { return }
            let waiter = storage.state.withLock { $0.waiters.removeValue(forKey: id) }
            waiter?.continuation.resume(throwing: TestSupportError("timed out after \(timeout) waiting for \(what)"))
        }
        defer { timer.cancel() }
        return try await withCheckedThrowingContinuation { continuation in
            let found = storage.state.withLock { s -> MQTTMessage? in
                if let index = s.buffer.firstIndex(where: predicate) { return s.buffer.remove(at: index) }
                s.waiters[id] = Waiter(predicate: predicate, continuation: continuation)
                return nil
            }
            if let found { continuation.resume(returning: found) }
        }
    }

    /// The next `count` messages matching `predicate`, in arrival order.
    public func next(
        _ count: Int, timeout: Duration = .seconds(10), _ what: String = "messages",
        where predicate: @escaping @Sendable (MQTTMessage) -> Bool = { _ in true }
    ) async throws -> [MQTTMessage] {
        var result: [MQTTMessage] = []
        for i in 0..<count {
            result.append(try await next(timeout: timeout, "\(what) (\(i + 1) of \(count))", where: predicate))
        }
        return result
    }
}
