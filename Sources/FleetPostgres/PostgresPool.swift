import Dispatch
public import Logging
import NIOCore
import NIOPosix
import NIOSSL
public import PostgresNIO
import Synchronization

/// A failure talking to PostgreSQL, said plainly (PostgresNIO's own errors print as a generic
/// "PSQLError" on purpose; ours carry the server's message and SQLSTATE, which hold no secret).
public struct PostgresStoreError: Error, Sendable, CustomStringConvertible {
    public var description: String
    /// The server's SQLSTATE, when the server answered with an error.
    public var sqlState: String?

    init(_ description: String, sqlState: String? = nil) {
        self.description = description
        self.sqlState = sqlState
    }

    static func wrap(_ error: any Error) -> PostgresStoreError {
        if let error = error as? PostgresStoreError { return error }
        if let error = error as? PSQLError {
            if let info = error.serverInfo {
                let state = info[.sqlState]
                return PostgresStoreError(
                    "PostgreSQL: \(info[.message] ?? "error")\(state.map { " (SQLSTATE \($0))" } ?? "")", sqlState: state)
            }
            // A connection error's cause (a refused certificate, a refused connection) says what to fix.
            return PostgresStoreError("PostgreSQL: \(error.code)\(error.underlying.map { ": \($0)" } ?? "")")
        }
        return PostgresStoreError("PostgreSQL: \(error)")
    }

    /// A unique constraint refused a row (SQLSTATE 23505).
    var isUniqueViolation: Bool { sqlState == "23505" }
}

/// A few connections to one database, used by blocking calls: the store protocols the queue and
/// the aggregator share are synchronous (as GRDB is), and their callers are threads that may
/// wait. Each call takes a connection (waiting for one while all are busy), runs its statements
/// on PostgresNIO's event loop (an event loop group of the pool's own, so no caller can be one of
/// its threads) and waits for the answer with a deadline: a database that stops answering fails
/// the call after `timeout` and its connection is closed, rather than holding the caller for
/// ever. A connection that failed is dropped and a new one is opened on the next call, so the
/// pool comes back by itself once the database does.
public final class PostgresPool: Sendable {
    public let location: PostgresLocation
    let configuration: PostgresConnection.Configuration
    let logger: Logger
    let group: MultiThreadedEventLoopGroup
    let timeout: Duration
    let size: Int
    private let available: DispatchSemaphore
    private let idle = Mutex<[PostgresConnection]>([])
    private let nextID = Atomic<Int>(1)

    /// Opens one connection at once (so that a wrong address, user, password or TLS setting is
    /// an error at startup, not at the first write).
    public init(location: PostgresLocation, password: String?, size: Int = 4, timeout: Duration = .seconds(30), logger: Logger) throws {
        self.location = location
        self.logger = logger
        self.timeout = timeout
        self.size = max(1, size)
        available = DispatchSemaphore(value: self.size)
        let tls: PostgresConnection.Configuration.TLS
        switch location.tls {
        case .disable:
            tls = .disable
        case .require:
            var settings = TLSConfiguration.makeClientConfiguration()
            settings.certificateVerification = .none
            tls = .require(try NIOSSLContext(configuration: settings))
        case .verifyFull(let rootCertificateFile):
            var settings = TLSConfiguration.makeClientConfiguration()
            settings.certificateVerification = .fullVerification
            if let rootCertificateFile {
                do {
                    settings.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(rootCertificateFile))
                } catch {
                    throw PostgresStoreError("cannot read the database's CA certificate '\(rootCertificateFile)': \(error)")
                }
            }
            tls = .require(try NIOSSLContext(configuration: settings))
        }
        var configuration = PostgresConnection.Configuration(
            host: location.address.host, port: location.address.port, username: location.user, password: password,
            database: location.database, tls: tls)
        configuration.options.connectTimeout = .seconds(10)
        self.configuration = configuration
        group = MultiThreadedEventLoopGroup(numberOfThreads: min(2, System.coreCount))
        do {
            try withConnection { _ in }
        } catch {
            try? group.syncShutdownGracefully()
            throw error
        }
    }

    deinit {
        // Closed and waited for (PostgresNIO asserts that a connection is closed before it goes).
        for connection in idle.withLock({ $0 }) { Connection.closeAndWait(connection) }
        try? group.syncShutdownGracefully()
    }

    /// One connection for `body`'s statements (autocommit: each is its own transaction).
    public func withConnection<T>(_ body: (Connection) throws -> T) throws -> T {
        guard available.wait(timeout: .now() + .milliseconds(Int(timeout.components.seconds * 1000))) == .success else {
            throw PostgresStoreError("PostgreSQL: no connection free within \(timeout) (every one is busy)")
        }
        defer { available.signal() }
        // An idle connection the server has closed meanwhile (a restart, an idle timeout) is
        // dropped here: a query sent on it is never answered.
        let reusable = idle.withLock { idle -> PostgresConnection? in
            while let last = idle.popLast() {
                if !last.isClosed { return last }
            }
            return nil
        }
        let raw = try reusable ?? open()
        let connection = Connection(raw: raw, logger: logger, timeout: timeout, pooled: true)
        do {
            let result = try body(connection)
            idle.withLock { $0.append(raw) }
            return result
        } catch {
            // Kept only while it is sound: a statement the server refused leaves it usable.
            if raw.isClosed || connection.broken.withLock({ $0 }) {
                Connection.closeAndWait(raw)
            } else {
                idle.withLock { $0.append(raw) }
            }
            throw error
        }
    }

    /// `body` in one transaction: committed when it returns, rolled back when it throws.
    public func transaction<T>(_ body: (Connection) throws -> T) throws -> T {
        try withConnection { connection in
            try connection.execute("BEGIN")
            do {
                let result = try body(connection)
                try connection.execute("COMMIT")
                return result
            } catch {
                try? connection.execute("ROLLBACK")
                throw error
            }
        }
    }

    /// A connection of its own, outside the pool (the leader lease's, which must never wait behind
    /// the store's traffic), whose calls fail after `timeout` (default: the pool's).
    public func dedicatedConnection(timeout: Duration? = nil) throws -> Connection {
        Connection(raw: try open(), logger: logger, timeout: timeout ?? self.timeout)
    }

    private func open() throws -> PostgresConnection {
        let future = PostgresConnection.connect(
            on: group.next(), configuration: configuration, id: nextID.wrappingAdd(1, ordering: .relaxed).oldValue, logger: logger)
        do {
            return try Connection.wait(future, timeout: timeout + .seconds(10)) { future.whenSuccess { $0.close().whenComplete { _ in } } }
        } catch {
            throw PostgresStoreError("cannot connect to \(location): \(PostgresStoreError.wrap(error).description)")
        }
    }

    /// One connection, used by one caller at a time.
    public final class Connection: Sendable {
        let raw: PostgresConnection
        let logger: Logger
        let timeout: Duration
        /// It timed out: what it was doing is unknown, so it is closed, never reused.
        let broken = Mutex(false)
        /// A wrapper for one call on a pooled connection (the pool keeps the connection).
        let pooled: Bool

        init(raw: PostgresConnection, logger: Logger, timeout: Duration, pooled: Bool = false) {
            self.pooled = pooled
            self.raw = raw
            self.logger = logger
            self.timeout = timeout
        }

        deinit {
            // A connection held by its own (the lease's) goes with it.
            if !raw.isClosed, !pooled { Self.closeAndWait(raw) }
        }

        /// Closes `raw` and waits for it (at most 5 s), unless called on its event loop.
        static func closeAndWait(_ raw: PostgresConnection) {
            guard !raw.isClosed, !raw.eventLoop.inEventLoop else { return }
            _ = try? wait(raw.close(), timeout: .seconds(5)) {}
        }

        /// Runs `query` and returns its rows.
        @discardableResult
        public func query(_ query: PostgresQuery) throws -> PostgresQueryResult {
            let future = raw.query(query, logger: logger)
            do {
                return try Self.wait(future, timeout: timeout) {
                    self.broken.withLock { $0 = true }
                    self.raw.close().whenComplete { _ in }
                }
            } catch {
                throw PostgresStoreError.wrap(error)
            }
        }

        /// A statement without parameters.
        public func execute(_ sql: String) throws {
            try query(PostgresQuery(unsafeSQL: sql))
        }

        /// How many rows the statement changed.
        public func changes(_ query: PostgresQuery) throws -> Int {
            try self.query(query).metadata.rows ?? 0
        }

        public func close() {
            Self.closeAndWait(raw)
        }

        public var isClosed: Bool { raw.isClosed || broken.withLock { $0 } }

        /// Waits for `future` at most `timeout`; past it, `onTimeout` (close what hangs) and an error.
        static func wait<T: Sendable>(_ future: EventLoopFuture<T>, timeout: Duration, onTimeout: () -> Void) throws -> T {
            let done = DispatchSemaphore(value: 0)
            let result = Mutex<Result<T, any Error>?>(nil)
            future.whenComplete { outcome in
                result.withLock { $0 = outcome }
                done.signal()
            }
            let c = timeout.components
            let deadline = DispatchTime.now() + .milliseconds(Int(c.seconds * 1000 + c.attoseconds / 1_000_000_000_000_000))
            guard done.wait(timeout: deadline) == .success else {
                onTimeout()
                throw PostgresStoreError("PostgreSQL did not answer within \(timeout)")
            }
            return try result.withLock { $0! }.get()
        }
    }
}
