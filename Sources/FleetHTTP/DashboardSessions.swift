import Synchronization

/// The dashboard's sign-ins: a random session id in the cookie, the token it was opened
/// with kept here (a cookie that held the token itself handed it to anything that could
/// read the browser's cookies, for as long as the token lived). A session ends after
/// `lifetime`, after `idle` without use, at sign-out, or when its token leaves the token
/// file (every use checks the token again). At most `capacity` sessions; the least recently
/// used goes first. In memory: a restart of the aggregator signs everyone out.
final class DashboardSessions: Sendable {
    struct Session {
        var token: String
        var created: ContinuousClock.Instant
        var used: ContinuousClock.Instant
    }

    let lifetime: Duration
    let idle: Duration
    let capacity: Int
    private let sessions = Mutex([String: Session]())

    init(lifetime: Duration = .seconds(12 * 3600), idle: Duration = .seconds(3600), capacity: Int = 10_000) {
        self.lifetime = lifetime
        self.idle = idle
        self.capacity = capacity
    }

    /// A new session for `token`; its id, 256 random bits in hex.
    func open(token: String) -> String {
        var generator = SystemRandomNumberGenerator()
        let id = (0..<4).map { _ in
            let hex = String(generator.next() as UInt64, radix: 16)
            return String(repeating: "0", count: 16 - hex.count) + hex
        }.joined()
        let now = ContinuousClock.now
        sessions.withLock { all in
            if all.count >= capacity, let oldest = all.min(by: { $0.value.used < $1.value.used })?.key { all[oldest] = nil }
            all[id] = Session(token: token, created: now, used: now)
        }
        return id
    }

    /// The token of a live session, or nil (unknown, expired: an expired one is removed).
    func token(for id: String) -> String? {
        let now = ContinuousClock.now
        return sessions.withLock { all in
            guard var session = all[id] else { return nil }
            guard now - session.created < lifetime, now - session.used < idle else {
                all[id] = nil
                return nil
            }
            session.used = now
            all[id] = session
            return session.token
        }
    }

    func close(_ id: String) {
        _ = sessions.withLock { $0.removeValue(forKey: id) }
    }

    var count: Int { sessions.withLock { $0.count } }
}
