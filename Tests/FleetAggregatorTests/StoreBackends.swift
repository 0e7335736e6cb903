import FleetAggregator
import FleetPostgres
import FleetQueue
import Foundation
import Logging
import TestSupport
import Testing

/// The two store backends: every store test runs against both (the conformance suite).
enum StoreBackend: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case sqlite
    case postgres

    var testDescription: String { rawValue }
}

/// Fresh, empty stores: an SQLite file in a new directory, or a new database on the test
/// process's real PostgreSQL server (started once, as the postgres user, on a free port).
struct FreshStores: @unchecked Sendable {  // immutable; its stores are Sendable
    let stores: AggregatorStores
    /// What `--db` takes for the same database: the file's path, or the postgres:// URL.
    let database: String
    /// The PostgreSQL password's file (nil for SQLite).
    let passwordFile: String?
    let directory: String
    let server: PostgresServer?

    init(_ backend: StoreBackend) throws {
        directory = try temporaryDirectory("edgefleet-store")
        switch backend {
        case .sqlite:
            database = directory + "/fleet.sqlite"
            stores = try .sqlite(path: database)
            passwordFile = nil
            server = nil
        case .postgres:
            let server = try PostgresServer.shared()
            database = server.url(try server.createDatabase())
            passwordFile = server.passwordFile
            stores = try PostgresStores.open(url: database, passwordFile: passwordFile, environment: [:], logger: Logger(label: "test")).stores
            self.server = server
        }
    }

    /// The same database opened again (a restart).
    func reopen() throws -> AggregatorStores {
        guard server != nil else { return try .sqlite(path: database) }
        return try PostgresStores.open(url: database, passwordFile: passwordFile, environment: [:], logger: Logger(label: "test")).stores
    }

    func remove() {
        try? FileManager.default.removeItem(atPath: directory)
    }
}
