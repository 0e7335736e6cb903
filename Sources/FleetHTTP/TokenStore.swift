public import Logging
import Synchronization

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif

/// The API's bearer tokens: a file with one token per line (blank lines and `#` comments
/// ignored), read again when it changes, so a token is added or revoked without a restart.
/// Tokens are compared in constant time: every configured token is compared in full,
/// whatever matches.
public final class TokenStore: Sendable {
    public struct ReadError: Error, CustomStringConvertible, Sendable {
        public var description: String
    }

    let path: String?
    let logger: Logger?
    private struct State {
        var tokens: [[UInt8]]
        var modified: timespec?
        var checkedAt: ContinuousClock.Instant?
        /// The last reading problem logged (each is logged once).
        var reported: String?
    }

    private let state: Mutex<State>

    /// `path` nil: no tokens (every change is refused).
    public init(path: String?, logger: Logger? = nil) throws(ReadError) {
        self.path = path
        self.logger = logger
        let tokens = try path.map { path throws(ReadError) in try Self.read(path: path) } ?? []
        state = Mutex(State(tokens: tokens, modified: path.flatMap(Self.modificationTime), checkedAt: ContinuousClock.now))
    }

    public var isConfigured: Bool { path != nil }

    /// Reads a token file: one token per line, blank lines and `#` comments ignored.
    public static func read(path: String) throws(ReadError) -> [[UInt8]] {
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw ReadError(description: "cannot read the token file '\(path)': \(error.localizedDescription)")
        }
        let tokens = text.split(whereSeparator: \.isNewline)
            .map { $0.trimmed }
            .filter { !$0.isEmpty && !$0.hasPrefix("#") }
        for token in tokens where token.count < 16 || token.contains(where: \.isWhitespace) {
            throw ReadError(description: "the token file '\(path)' holds a token shorter than 16 characters or with spaces; use long random tokens (openssl rand -hex 32)")
        }
        return tokens.map { Array($0.utf8) }
    }

    static func modificationTime(_ path: String) -> timespec? {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        return info.st_mtim
    }

    /// Whether `candidate` is one of the tokens.
    public func accepts(_ candidate: some StringProtocol) -> Bool {
        let tokens = current()
        let bytes = Array(candidate.utf8)
        var matched: UInt8 = 0
        for token in tokens { matched |= Self.constantTimeEqual(token, bytes) ? 1 : 0 }
        return matched == 1
    }

    /// Compares every byte of the longer of the two, so the time taken does not tell how
    /// much of a guess was right.
    static func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        var difference: UInt8 = a.count == b.count ? 0 : 1
        let n = max(a.count, b.count)
        for i in 0..<n {
            let x = i < a.count ? a[i] : 0
            let y = i < b.count ? b[i] : 0
            difference |= x ^ y
        }
        return difference == 0
    }

    /// The tokens, read again when the file changed (looked at most once a second). A file
    /// that became unreadable keeps the last good tokens.
    private func current() -> [[UInt8]] {
        guard let path else { return [] }
        return state.withLock { (s: inout State) -> [[UInt8]] in
            let now = ContinuousClock.now
            if let checked = s.checkedAt, now - checked < .seconds(1) { return s.tokens }
            s.checkedAt = now
            let modified = Self.modificationTime(path)
            if let modified, let previous = s.modified, modified.tv_sec == previous.tv_sec, modified.tv_nsec == previous.tv_nsec {
                return s.tokens
            }
            do {
                s.tokens = try Self.read(path: path)
                s.modified = modified
                s.reported = nil
            } catch let error as ReadError {
                // Keep serving with the last good tokens, and say so (once per problem).
                if s.reported != error.description {
                    s.reported = error.description
                    logger?.error("\(error.description); keeping the \(s.tokens.count) token(s) read before")
                }
            } catch {}
            return s.tokens
        }
    }
}

