import Synchronization

/// The agent's memory of when the site last reached Azure, and of its MQTT
/// session counter, kept in the state directory so that neither a restart, a
/// crash nor a power loss resets the 30-day clock.
///
/// Thread-safe: the MQTT loop thread asks for the next session (through the
/// will provider) while the probe loop records contacts.
public final class ContactTracker: Sendable {
    private let store: AgentStateStore
    private let clocks: SystemClocks
    private let state: Mutex<AgentState>

    /// Loads the saved state. A corrupt state file is moved aside and reported
    /// through `onProblem`; the agent then starts as "never in contact" (the safe side).
    public init(store: AgentStateStore, clocks: SystemClocks = .system, onProblem: (StateError) -> Void = { _ in }) {
        self.store = store
        self.clocks = clocks
        let loaded: AgentState
        do {
            loaded = try store.load()
        } catch {
            onProblem(error)
            loaded = AgentState()
        }
        self.state = Mutex(loaded)
    }

    /// Records a successful Azure contact now and saves it durably before returning.
    public func recordContact() throws(StateError) {
        let reading = clocks.read()
        let record = ContactRecord(wallClock: reading.wallClock, bootID: reading.bootID, bootTimeNanoseconds: reading.bootTimeNanoseconds)
        // Saved under the lock: saves never interleave, and the file always holds the newest state.
        try state.withLock { s throws(StateError) in
            s.lastContact = record
            try store.save(s)
        }
    }

    /// The age in seconds of the last successful contact, or `nil` if there has never been one.
    public var lastContactAge: Double? {
        let record = state.withLock { $0.lastContact }
        return record?.age(now: clocks.read())
    }

    /// The session counter for the next connection: one more than the last,
    /// saved before it is used. If saving fails the counter still goes up in
    /// memory (a repeated session number after a crash would be worse than a gap).
    @discardableResult
    public func nextSession() -> (session: UInt64, problem: StateError?) {
        state.withLock { s in
            s.session &+= 1
            do throws(StateError) {
                try store.save(s)
                return (s.session, nil)
            } catch {
                return (s.session, error)
            }
        }
    }

    /// The session of the current (last started) connection.
    public var currentSession: UInt64 { state.withLock { $0.session } }
}
