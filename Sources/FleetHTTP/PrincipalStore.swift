public import Logging
public import Principals
import Synchronization

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif

/// The API's principals (`--principals FILE`, or the flat token list of `--token-file`), read
/// again when the file changes (looked at most once a second), so a principal is added,
/// changed or revoked without a restart. A file that became unreadable or invalid keeps the
/// last good principals, and says so once.
public final class PrincipalStore: Sendable {
    let path: String?
    let logger: Logger?
    private struct State {
        var file: PrincipalsFile
        var modified: timespec?
        var checkedAt: ContinuousClock.Instant?
        /// The last reading problem logged (each is logged once).
        var reported: String?
    }

    private let state: Mutex<State>

    /// `path` nil: nobody is known (every change is refused; reads only if they are public).
    public init(path: String?, logger: Logger? = nil) throws(PrincipalsError) {
        self.path = path
        self.logger = logger
        let file = try path.map { path throws(PrincipalsError) in try PrincipalsFile.read(path: path) } ?? PrincipalsFile()
        state = Mutex(State(file: file, modified: path.flatMap(Self.modificationTime), checkedAt: ContinuousClock.now))
    }

    /// A store of these principals (tests).
    public init(_ principals: [Principal]) {
        path = nil
        logger = nil
        state = Mutex(State(file: PrincipalsFile(principals: principals), modified: nil, checkedAt: nil))
    }

    public var isConfigured: Bool { path != nil || !current().principals.isEmpty }

    /// The principal whose token this is, or nil.
    public func principal(forToken token: some StringProtocol) -> Principal? {
        current().principal(forToken: token)
    }

    static func modificationTime(_ path: String) -> timespec? {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        return info.st_mtim
    }

    private func current() -> PrincipalsFile {
        guard let path else { return state.withLock { $0.file } }
        return state.withLock { (s: inout State) -> PrincipalsFile in
            let now = ContinuousClock.now
            if let checked = s.checkedAt, now - checked < .seconds(1) { return s.file }
            s.checkedAt = now
            let modified = Self.modificationTime(path)
            if let modified, let previous = s.modified, modified.tv_sec == previous.tv_sec, modified.tv_nsec == previous.tv_nsec {
                return s.file
            }
            do {
                s.file = try PrincipalsFile.read(path: path)
                s.modified = modified
                s.reported = nil
            } catch let error as PrincipalsError {
                if s.reported != error.description {
                    s.reported = error.description
                    logger?.error("\(error.description); keeping the \(s.file.principals.count) principal(s) read before")
                }
            } catch {}
            return s.file
        }
    }
}

/// Addresses that keep presenting unknown tokens are refused for a while without a look at
/// what they send (429 with `Retry-After`): guessing a token from one address goes at most
/// `limit` tries per `window`. At most `capacity` addresses are remembered (the oldest go).
final class FailedAttempts: Sendable {
    private struct Record {
        var count: Int
        var since: ContinuousClock.Instant
    }

    let limit: Int
    let window: Duration
    let capacity: Int
    private let records = Mutex([String: Record]())

    init(limit: Int = 10, window: Duration = .seconds(60), capacity: Int = 10_000) {
        self.limit = limit
        self.window = window
        self.capacity = capacity
    }

    /// How long `address` must wait before it is heard again (nil: now).
    func wait(for address: String) -> Duration? {
        let now = ContinuousClock.now
        return records.withLock { all in
            guard let record = all[address] else { return nil }
            let left = record.since + window - now
            if left <= .zero {
                all[address] = nil
                return nil
            }
            return record.count >= limit ? left : nil
        }
    }

    func failed(_ address: String) {
        let now = ContinuousClock.now
        records.withLock { all in
            if var record = all[address], now - record.since < window {
                record.count += 1
                all[address] = record
                return
            }
            if all[address] == nil, all.count >= capacity {
                // Forget the records whose window has passed; if none, the oldest.
                all = all.filter { now - $0.value.since < window }
                if all.count >= capacity, let oldest = all.min(by: { $0.value.since < $1.value.since })?.key { all[oldest] = nil }
            }
            all[address] = Record(count: 1, since: now)
        }
    }
}
