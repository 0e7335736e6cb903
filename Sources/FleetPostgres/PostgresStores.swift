public import FleetAggregator
public import FleetQueue
public import Logging

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif

/// The aggregator's stores in PostgreSQL: a pool, the schema migrated, and both stores on it.
public enum PostgresStores {
    /// The password: the file's first line when a file is named (a missing or unreadable file
    /// is an error), else `PGPASSWORD`, else none (trust or certificate authentication).
    public static func password(file: String?, environment: [String: String]) throws -> String? {
        if let file {
            guard let data = FileManager.default.contents(atPath: file) else {
                throw PostgresStoreError("cannot read the database password file '\(file)'")
            }
            let line = String(decoding: data, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false).first ?? ""
            let password = String(line).trimmingCharacters(in: .whitespaces)
            guard !password.isEmpty else { throw PostgresStoreError("the database password file '\(file)' is empty") }
            return password
        }
        return environment["PGPASSWORD"].flatMap { $0.isEmpty ? nil : $0 }
    }

    /// Connects (failing at once if the database cannot be reached or refuses the user),
    /// migrates, and returns both stores on one pool.
    /// `fence`: the lease dispatch writes must hold (the replica's `Leadership.fence`).
    public static func open(
        url: String, passwordFile: String?, environment: [String: String], poolSize: Int = 4, fence: (@Sendable () -> LeaseGrant?)? = nil,
        logger: Logger
    ) throws -> (stores: AggregatorStores, pool: PostgresPool) {
        let location = try PostgresLocation(url: url)
        let pool = try PostgresPool(
            location: location, password: try password(file: passwordFile, environment: environment), size: poolSize, logger: logger)
        try PostgresSchema.migrate(pool)
        let stores = AggregatorStores(
            sites: PostgresSiteStore(pool: pool), operations: PostgresOperationStore(pool: pool, fence: fence), audit: PostgresAuditStore(pool: pool), rollouts: PostgresRolloutStore(pool: pool),
            events: PostgresEventStore(pool: pool),
            description: location.description)
        return (stores, pool)
    }
}
