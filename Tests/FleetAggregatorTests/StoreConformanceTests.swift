import FleetAggregator
import FleetCore
import FleetPostgres
import FleetQueue
import Foundation
import Logging
import TestSupport
import Testing

/// The site store's rules on both backends, the PostgreSQL backend's migrations and URL, and
/// what it does when the database refuses the user or goes away.
@Suite("the stores on SQLite and PostgreSQL (real servers)", .ownThread)
struct StoreConformanceTests {
    static let now = Date(timeIntervalSince1970: 1_790_000_000)

    func record(_ site: String, seq: UInt64 = 1) throws -> SiteRecord {
        var record = SiteRecord(site: try SiteID(site))
        record.lastSeq = seq
        record.lastHeartbeatAt = Self.now
        record.lastAzureContactAt = Self.now.addingTimeInterval(-60)
        record.capabilities = ["clusterAutoscaler": true]
        return record
    }

    @Test("site records: saved, read back whole, updated in place; a forgotten site is removed, tombstoned, not written back, and revived", arguments: StoreBackend.allCases)
    func siteRecords(backend: StoreBackend) throws {
        let fresh = try FreshStores(backend)
        defer { fresh.remove() }
        let store = fresh.stores.sites
        // More than one batch (the PostgreSQL store writes 1,000 per statement).
        let records = try (1...2_500).map { try record(String(format: "site-%04d", $0)) }
        try store.save(records, at: Self.now)
        #expect(try store.count() == 2_500)
        let loaded = try store.loadAll()
        #expect(loaded.problems.isEmpty)
        #expect(Dictionary(uniqueKeysWithValues: loaded.records.map { ($0.site, $0) }) == Dictionary(uniqueKeysWithValues: records.map { ($0.site, $0) }))
        // Updated in place.
        try store.save([try record("site-0001", seq: 99)], at: Self.now)
        #expect(try store.loadAll().records.first { $0.site.rawValue == "site-0001" }?.lastSeq == 99)
        #expect(try store.count() == 2_500)

        let gone = try SiteID("site-0002")
        try store.forget(gone, at: Self.now)
        #expect(try store.forgotten() == [gone])
        #expect(try store.count() == 2_499)
        // A record taken for writing just before its site was forgotten is not written back.
        try store.save([try record("site-0002", seq: 7)], at: Self.now)
        #expect(try store.count() == 2_499)
        try store.revive([gone])
        #expect(try store.forgotten().isEmpty)
        try store.save([try record("site-0002", seq: 8)], at: Self.now)
        #expect(try store.loadAll().records.first { $0.site == gone }?.lastSeq == 8)

        // A restart reads the same.
        let again = try fresh.reopen()
        #expect(try again.sites.count() == 2_500)
        #expect(try again.sites.loadAll().records.first { $0.site.rawValue == "site-0001" }?.lastSeq == 99)
    }

    @Test("the audit log: appended with increasing ids, read newest first, paged by id, filtered by principal", arguments: StoreBackend.allCases)
    func audit(_ backend: StoreBackend) throws {
        let fresh = try FreshStores(backend)
        defer { fresh.remove() }
        let audit = fresh.stores.audit
        var ids: [Int64] = []
        for (n, who) in ["ada", "otto", "ada", "vera", "ada"].enumerated() {
            let entry = try audit.append(
                AuditEntry(
                    at: Self.now.addingTimeInterval(Double(n)), principal: who, role: "admin", onBehalfOf: n == 0 ? "x@y" : nil, address: "10.0.0.\(n)",
                    action: "operation.cancel", target: "op-\(n)", status: 200, detail: "now cancelled"))
            ids.append(try #require(entry.id))
        }
        #expect(ids == ids.sorted() && Set(ids).count == 5)
        let newest = try audit.entries(before: nil, limit: 3, principal: nil)
        #expect(newest.map(\.target) == ["op-4", "op-3", "op-2"])
        #expect(try audit.entries(before: newest.last?.id, limit: 10, principal: nil).map(\.target) == ["op-1", "op-0"])
        let ada = try audit.entries(before: nil, limit: 10, principal: "ada")
        #expect(ada.map(\.target) == ["op-4", "op-2", "op-0"])
        #expect(ada.last?.onBehalfOf == "x@y" && ada.last?.address == "10.0.0.0" && ada.last?.at == Self.now)
    }

    @Test("rollouts: stored whole, found by id and idempotency key (used once), written only over the version read, unfinished ones listed", arguments: StoreBackend.allCases)
    func rollouts(_ backend: StoreBackend) throws {
        let fresh = try FreshStores(backend)
        defer { fresh.remove() }
        let store = fresh.stores.rollouts
        func make(_ id: String, key: String?, at offset: Double) throws -> Rollout {
            Rollout(
                id: id, kind: .extensionInstall, params: ["name": "m"], selector: "region=north", createdBy: "ada", createdAt: Self.now.addingTimeInterval(offset),
                canary: 1, batch: .percent(25), maxFailures: .count(2), waitS: 60, expiresAt: nil, idempotencyKey: key, waves: 2,
                sites: [RolloutSite(site: try SiteID("s-1"), wave: 0), RolloutSite(site: try SiteID("s-2"), wave: 1)],
                skipped: [RolloutSkip(site: try SiteID("s-3"), reason: "past its deadline")])
        }
        let first = try store.insert(try make("ro-1", key: "k", at: 0))
        #expect(first.version == 1)
        #expect(throws: RolloutStoreError.duplicateIdempotencyKey) { try store.insert(try make("ro-2", key: "k", at: 1)) }
        _ = try store.insert(try make("ro-3", key: nil, at: 2))
        _ = try store.insert(try make("ro-4", key: nil, at: 3))
        #expect(try store.rollout(idempotencyKey: "k")?.id == "ro-1")
        #expect(try store.rollout(id: "ro-1") == first)
        var changed = first
        changed.state = .paused
        changed.sites[0].operationID = "op-1"
        let written = try store.update(changed)
        #expect(try written.version == 2 && store.rollout(id: "ro-1") == written)
        // A writer that read version 1 is refused: it must read again.
        #expect(throws: RolloutStoreError.conflict) { try store.update(changed) }
        var done = try #require(try store.rollout(id: "ro-3"))
        done.state = .completed
        _ = try store.update(done)
        #expect(try store.unfinished().map(\.id) == ["ro-1", "ro-4"])
        #expect(try store.list(limit: 2).map(\.id) == ["ro-4", "ro-3"])
    }

    @Test("operations survive a reopen of the database; the run records too", arguments: StoreBackend.allCases)
    func operationsReopen(backend: StoreBackend) throws {
        let fresh = try FreshStores(backend)
        defer { fresh.remove() }
        let queue = DeferredQueue(store: fresh.stores.operations, executors: OperationQueueTests.executors)
        let submitted = try queue.submit(
            SubmissionRequest(site: "store-1", kind: "cluster.upgrade", params: ["kubernetesVersion": "1.30.4"], createdBy: "alice", idempotencyKey: "k1"),
            situation: OperationQueueTests.semi, now: Self.now
        ).operation
        try fresh.stores.operations.recordRun(
            ExecutorRun(operationID: submitted.id, processGroup: 4242, startTicks: 123_456_789_012, bootID: "boot", host: "h", startedAt: Self.now))
        let again = try fresh.reopen().operations
        #expect(try again.operation(id: submitted.id) == submitted)
        #expect(try again.operation(idempotencyKey: "k1")?.id == submitted.id)
        #expect(try again.counts() == [submitted.site: [.queued: 1]])
        let runs = try again.runs()
        #expect(runs.count == 1 && runs.first?.processGroup == 4242 && runs.first?.startTicks == 123_456_789_012 && runs.first?.startedAt == Self.now)
    }

    @Test("counts for some sites are the whole count's entries for those sites", arguments: StoreBackend.allCases)
    func countsOfSites(_ backend: StoreBackend) throws {
        let fresh = try FreshStores(backend)
        defer { fresh.remove() }
        let queue = DeferredQueue(store: fresh.stores.operations, executors: OperationQueueTests.executors)
        var first: DeferredOperation?
        for (n, site) in ["store-1", "store-1", "store-2", "store-3", "store-3", "store-3"].enumerated() {
            let operation = try queue.submit(
                SubmissionRequest(site: site, kind: "extension.install", params: ["name": "ext-\(n)"], createdBy: "alice"),
                situation: OperationQueueTests.semi, now: Self.now.addingTimeInterval(Double(n))
            ).operation
            if first == nil { first = operation }
        }
        _ = try queue.cancel(id: try #require(first).id, by: "alice", now: Self.now)
        let store = fresh.stores.operations
        let all = try store.counts()
        let one = try SiteID("store-1"), three = try SiteID("store-3"), none = try SiteID("store-9")
        #expect(all[one]?[.cancelled] == 1 && all[one]?[.queued] == 1)
        #expect(try store.counts(sites: [one, three, none]) == all.filter { [one, three].contains($0.key) })
        #expect(try store.counts(sites: [none]).isEmpty)
        #expect(try store.counts(sites: []).isEmpty)
    }

    @Test("a write by another process is a change elsewhere (SQLite tells by its data version; PostgreSQL cannot tell, so always); the store's own writes are not", arguments: StoreBackend.allCases)
    func changedElsewhere(_ backend: StoreBackend) throws {
        let fresh = try FreshStores(backend)
        defer { fresh.remove() }
        let store = fresh.stores.operations
        func submit(_ store: any OperationStore, _ name: String) throws {
            _ = try DeferredQueue(store: store, executors: OperationQueueTests.executors).submit(
                SubmissionRequest(site: "store-1", kind: "extension.install", params: ["name": name], createdBy: "alice"),
                situation: OperationQueueTests.semi, now: Self.now)
        }
        #expect(try store.changedElsewhere())  // the first look cannot know
        try submit(store, "own")
        #expect(try store.changedElsewhere() == (backend == .postgres))
        let other = try fresh.reopen().operations  // another process's connection to the same database
        try submit(other, "theirs")
        #expect(try store.changedElsewhere())
        #expect(try store.changedElsewhere() == (backend == .postgres))
        #expect(try store.counts()[try SiteID("store-1")]?[.queued] == 2)
    }

    @Test("PostgreSQL: versioned migrations run once, by one replica at a time; a database migrated by a newer EdgeFleet is refused")
    func migrations() throws {
        let fresh = try FreshStores(.postgres)
        defer { fresh.remove() }
        let server = try #require(fresh.server)
        let name = String(fresh.database.split(separator: "/").last!)
        let names = try server.psql("SELECT name FROM schema_migrations ORDER BY substring(name from '^v([0-9]+)')::int", database: name).split(separator: "\n").map(String.init)
        #expect(names == ["v1-sites", "v2-operations", "v3-runs", "v4-forgotten-sites", "v5-leader-lease", "v6-claim-expiry", "v7-event-outbox", "v8-audit", "v9-rollouts", "v10-events"])
        // Three replicas opening at once: each finds the schema whole, nothing is applied twice.
        let opened = try (0..<3).map { _ in Task.detached { try fresh.reopen().sites.count() } }
        for task in opened { _ = try awaitBlocking(task) }
        #expect(try server.psql("SELECT count(*) FROM schema_migrations", database: name).trimmingCharacters(in: .whitespacesAndNewlines) == "10")
        try server.psql("INSERT INTO schema_migrations (name) VALUES ('v99-from-the-future')", database: name)
        #expect {
            _ = try fresh.reopen()
        } throws: { error in
            "\(error)".contains("migrated by a newer EdgeFleet") && "\(error)".contains("v99-from-the-future")
        }
    }

    @Test("PostgreSQL lease and fence: one holder at a time, a new epoch at every change; a deposed leader's claim and outcome are refused, the new leader's taken")
    func leaseAndFence() throws {
        let fresh = try FreshStores(.postgres)
        defer { fresh.remove() }
        let server = try #require(fresh.server)
        let (_, pool) = try PostgresStores.open(url: fresh.database, passwordFile: fresh.passwordFile, environment: [:], logger: Logger(label: "test"))
        let lease = PostgresLeaseStore(pool: pool)
        let opening = try lease.campaign(holder: "a", epoch: nil, duration: .seconds(2))
        let a = try #require(opening.grant)
        #expect(a.holder == "a" && opening.won)
        // B cannot take a lease that has not run out; A renews without a new epoch.
        let byB = try lease.campaign(holder: "b", epoch: nil, duration: .seconds(2))
        #expect(byB.grant == a && !byB.won)
        let renewed = try lease.campaign(holder: "a", epoch: a.epoch, duration: .seconds(2))
        #expect(renewed.grant == a && renewed.won)
        // A that stood down (it asks without its epoch) does not win back the lease it still names.
        let standingDown = try lease.campaign(holder: "a", epoch: nil, duration: .seconds(2))
        #expect(standingDown.grant == a && !standingDown.won)

        // Both replicas' stores, each fenced by what it believes it holds.
        let believed = LockedBox<[String: LeaseGrant]>(["a": a])
        func store(_ holder: String) throws -> PostgresOperationStore {
            PostgresOperationStore(pool: pool, fence: { believed.get()[holder] })
        }
        let queue = DeferredQueue(store: try store("a"), executors: OperationQueueTests.executors)
        func submit(_ version: String) throws -> DeferredOperation {
            try queue.submit(
                SubmissionRequest(site: "store-\(version.replacingOccurrences(of: ".", with: "-"))", kind: "cluster.upgrade", params: ["kubernetesVersion": version], createdBy: "t"),
                situation: OperationQueueTests.semi, now: Self.now
            ).operation
        }
        let first = try submit("1.30.1")
        let second = try submit("1.30.2")
        let running = try store("a").claim(first, at: Self.now, note: "attempt 1")
        #expect(throws: OperationStoreError.notLeader(id: second.id, epoch: nil)) { try store("b").claim(second, at: Self.now, note: "b is no leader") }

        // A's lease runs out (it stalled); B takes it under a new epoch.
        try lease.release(holder: "a", epoch: a.epoch)
        let takeover = try lease.campaign(holder: "b", epoch: nil, duration: .seconds(30))
        let b = try #require(takeover.grant)
        #expect(takeover.won)
        #expect(b.holder == "b" && b.epoch == a.epoch + 1)
        believed.set(["a": a, "b": b])
        // A, deposed but unaware, can neither claim nor record an outcome: both refused in the database.
        #expect(throws: OperationStoreError.notLeader(id: second.id, epoch: a.epoch)) { try store("a").claim(second, at: Self.now, note: "late") }
        #expect(throws: OperationStoreError.notLeader(id: first.id, epoch: a.epoch)) {
            try store("a").complete(running, to: .succeeded, at: Self.now, note: "late outcome") { _ in }
        }
        // Nor expire or block one (the dispatcher's other writes), nor queue its own run again.
        #expect(throws: OperationStoreError.notLeader(id: second.id, epoch: a.epoch)) {
            try store("a").transitionAsLeader(id: second.id, expected: [.queued], to: .expired, at: Self.now, note: "late") { _ in }
        }
        #expect(throws: OperationStoreError.notLeader(id: first.id, epoch: a.epoch)) {
            try store("a").transitionAsLeader(id: first.id, expected: [.dispatching], to: .queued, at: Self.now, note: "late") { _ in }
        }
        #expect(try store("b").operation(id: first.id)?.state == .dispatching)
        #expect(try store("b").operation(id: second.id)?.state == .queued)
        // B's are taken.
        #expect(try store("b").claim(second, at: Self.now, note: "attempt 1").state == .dispatching)
        #expect(try store("b").complete(running, to: .succeeded, at: Self.now, note: "exit 0") { _ in }.state == .succeeded)
        _ = server
    }

    @Test("PostgreSQL: an operation running under a replica on another host is queued again only once its claim has run out or was released, its history saying why")
    func claimsElsewhere() async throws {
        let fresh = try FreshStores(.postgres)
        defer { fresh.remove() }
        let store = fresh.stores.operations
        let queue = DeferredQueue(store: store, executors: OperationQueueTests.executors)
        func running(_ version: String, hold: Duration) throws -> DeferredOperation {
            let submitted = try queue.submit(
                SubmissionRequest(site: "store-\(version)", kind: "cluster.upgrade", params: ["kubernetesVersion": "1.30.\(version)"], createdBy: "t"),
                situation: OperationQueueTests.semi, now: Self.now
            ).operation
            let claimed = try store.claim(submitted, at: Self.now, note: "attempt 1 of 5")
            try store.holdClaim(id: claimed.id, for: hold)
            // Its executor runs on another machine (a replica that then died there).
            try store.recordRun(
                ExecutorRun(operationID: claimed.id, processGroup: 4242, startTicks: 1, bootID: "another-boot", host: "other-host", startedAt: Self.now))
            return claimed
        }
        let shortHold = try running("1", hold: .seconds(2))
        let released = try running("2", hold: .seconds(600))
        let held = try running("3", hold: .seconds(600))
        let dispatcher = Dispatcher(
            store: store, executors: OperationQueueTests.executors, settings: DispatchSettings(boundedRuns: true), logger: Logger(label: "test"),
            emit: { _ in })
        // The new leader's recovery: all three may still run over there; none is touched.
        try dispatcher.recover(now: Date())
        for operation in [shortHold, released, held] { #expect(try store.operation(id: operation.id)?.state == .dispatching) }
        // The replica that ran the second saw its executor end (its outcome refused): it released the claim.
        try store.releaseClaim(id: released.id)
        // The first one's claim runs out by itself.
        let deadline = ContinuousClock.now + .seconds(20)
        while try !store.claimLapsed(id: shortHold.id) {
            guard ContinuousClock.now < deadline else { throw TestSupportError("the claim never ran out") }
            try await Task.sleep(for: .milliseconds(100))
        }
        try dispatcher.recover(now: Date(), periodic: true)
        for operation in [shortHold, released] {
            let now = try #require(try store.operation(id: operation.id))
            #expect(now.state == .queued)
            #expect(now.history.last?.note.contains("ended with its replica, and its claim ran out") == true, "\(now.history.map(\.note))")
        }
        #expect(try store.operation(id: held.id)?.state == .dispatching, "a claim still held was taken")
        #expect(try SQLiteOperationStore(database: try AggregatorDatabase(path: fresh.directory + "/x.sqlite")).claimLapsed(id: "any"))
    }

    @Test("PostgreSQL URLs: the password is never in the URL; the user, the database and sslmode are checked; loopback defaults to plain TCP, elsewhere to verify-full")
    func locations() throws {
        let plain = try PostgresLocation(url: "postgres://fleet@127.0.0.1:5433/edgefleet")
        #expect(plain.user == "fleet" && plain.address.port == 5433 && plain.database == "edgefleet" && plain.tls == .disable)
        #expect(try PostgresLocation(url: "postgresql://fleet@db.example:5432/edgefleet").tls == .verifyFull(rootCertificateFile: nil))
        #expect(try PostgresLocation(url: "postgres://fleet@db.example/edgefleet?sslmode=verify-full&sslrootcert=/etc/ca.pem").tls
            == .verifyFull(rootCertificateFile: "/etc/ca.pem"))
        #expect(try PostgresLocation(url: "postgres://fleet@[::1]:5432/edgefleet?sslmode=require").tls == .require)
        #expect(try PostgresLocation(url: "postgres://fleet@db.example/edgefleet").address.port == 5432)
        func refusal(_ url: String) -> String? {
            do {
                _ = try PostgresLocation(url: url)
                return nil
            } catch {
                return error.description
            }
        }
        #expect(refusal("postgres://fleet:secret@127.0.0.1/edgefleet")?.contains("--db-password-file") == true)
        #expect(refusal("postgres://fleet:secret@127.0.0.1/edgefleet")?.contains("secret") == false)
        #expect(refusal("postgres://127.0.0.1/edgefleet")?.contains("names no user") == true)
        #expect(refusal("postgres://fleet@127.0.0.1:5432")?.contains("names no database") == true)
        #expect(refusal("postgres://fleet@127.0.0.1:99999/edgefleet")?.contains("database address") == true)
        #expect(refusal("postgres://fleet@127.0.0.1/edgefleet?sslmode=allow")?.contains("not one of disable, require, verify-full") == true)
        #expect(refusal("postgres://fleet@127.0.0.1/edgefleet?sslmode=require&sslrootcert=/x")?.contains("needs sslmode=verify-full") == true)
        #expect(refusal("postgres://fleet@127.0.0.1/edgefleet?application_name=x")?.contains("unknown URL parameter") == true)
    }

    @Test("PostgreSQL: a wrong password is refused at once with the server's reason and no secret; the password comes from a file or PGPASSWORD")
    func wrongPassword() throws {
        let server = try PostgresServer.shared()
        let url = server.url(try server.createDatabase())
        let directory = try temporaryDirectory("edgefleet-pgpw")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let wrong = directory + "/wrong"
        try Data("not-the-password-42\n".utf8).write(to: URL(fileURLWithPath: wrong))
        let started = ContinuousClock.now
        #expect {
            _ = try PostgresStores.open(url: url, passwordFile: wrong, environment: [:], logger: Logger(label: "test"))
        } throws: { error in
            let text = "\(error)"
            return text.contains("password authentication failed") && !text.contains("not-the-password-42")
        }
        #expect(ContinuousClock.now - started < .seconds(15))
        // PGPASSWORD when no file is named.
        let opened = try PostgresStores.open(url: url, passwordFile: nil, environment: ["PGPASSWORD": server.password], logger: Logger(label: "test"))
        #expect(try opened.stores.sites.count() == 0)
        #expect(throws: PostgresStoreError.self) { try PostgresStores.password(file: directory + "/missing", environment: [:]) }
    }

    @Test("PostgreSQL over TLS: verify-full with the server's CA connects, with another CA is refused naming the certificate; require encrypts without checking")
    func tls() throws {
        let pki = try TestPKI()
        defer { pki.remove() }
        let server = try PostgresServer(tls: pki)
        defer { try? server.stop() }
        let database = try server.createDatabase()
        func open(_ query: String) throws -> AggregatorStores {
            try PostgresStores.open(url: server.url(database, query: query), passwordFile: server.passwordFile, environment: [:], logger: Logger(label: "test"))
                .stores
        }
        let verified = try open("sslmode=verify-full&sslrootcert=\(pki.caCertificate)")
        try verified.sites.save([try record("tls-site")], at: Self.now)
        #expect(try verified.sites.count() == 1)
        // The session really is encrypted (the server says so).
        let encrypted = try server.psql("SELECT count(*) FROM pg_stat_ssl WHERE ssl AND pid <> pg_backend_pid()", database: database)
        #expect((Int(encrypted.trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0) >= 1)
        #expect {
            _ = try open("sslmode=verify-full&sslrootcert=\(pki.otherCACertificate)")
        } throws: { error in
            "\(error)".lowercased().contains("certificate")
        }
        #expect(try open("sslmode=require").sites.count() == 1)
    }

    @Test("PostgreSQL stopped: calls fail with a clear error within the timeout, nothing hangs; started again, the same pool works without a restart")
    func databaseStopped() throws {
        let server = try PostgresServer()  // its own: stopping it must not disturb other tests
        defer { try? server.stop() }
        let url = server.url(try server.createDatabase())
        let (stores, _) = try PostgresStores.open(url: url, passwordFile: server.passwordFile, environment: [:], logger: Logger(label: "test"))
        try stores.sites.save([try record("site-1")], at: Self.now)
        try server.stop()
        var started = ContinuousClock.now
        #expect(throws: PostgresStoreError.self) { try stores.sites.save([try record("site-2")], at: Self.now) }
        #expect(ContinuousClock.now - started < .seconds(5), "a stopped database held the caller")
        started = ContinuousClock.now
        #expect(throws: PostgresStoreError.self) { _ = try stores.operations.counts() }
        #expect(ContinuousClock.now - started < .seconds(5), "a stopped database held the caller")
        try server.start()
        try stores.sites.save([try record("site-2")], at: Self.now)
        #expect(try stores.sites.count() == 2)
    }
}

/// Waits for a detached task from synchronous test code.
func awaitBlocking<T: Sendable>(_ task: Task<T, any Error>) throws -> T {
    let done = DispatchSemaphore(value: 0)
    let box = LockedBox<Result<T, any Error>?>(nil)
    Task.detached {
        let result = await task.result
        box.set(result)
        done.signal()
    }
    done.wait()
    return try box.get()!.get()
}

final class LockedBox<T>: @unchecked Sendable {
    private var value: T
    private let lock = NSLock()
    init(_ value: T) { self.value = value }
    func set(_ value: T) { lock.withLock { self.value = value } }
    func get() -> T { lock.withLock { value } }
}
