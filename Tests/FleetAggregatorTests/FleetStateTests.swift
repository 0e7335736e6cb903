import FleetAggregator
@testable import FleetQueue
import FleetCore
import Foundation
import Testing

/// The fleet state with thresholds in seconds, driven by hand-made messages and `now`.
@Suite("fleet state: modes, events, schedule")
struct FleetStateTests {
    static let site = try! SiteID("store-1")
    static let t0 = Date(timeIntervalSince1970: 1_790_000_000)

    static var thresholds: Thresholds {
        var t = Thresholds()
        t.connectedWithin = .seconds(15)
        t.budget = .seconds(100)
        t.warnBefore = .seconds(40)
        t.criticalBefore = .seconds(20)
        t.stableFor = .seconds(5)
        return t
    }

    static func heartbeat(_ seq: UInt64, age: Double?, session: UInt64 = 1, certificate: Date? = nil, site: SiteID = site) -> SiteInput {
        .heartbeat(
            Heartbeat(
                site: site, session: session, seq: seq, sentAt: t0, azure: AzureReport(reachable: age == 0, lastContactAgeS: age, probe: "endpoints"),
                certificates: certificate.map { CertificateReport(earliestNotAfter: $0, source: "test") }))
    }

    static func at(_ seconds: Double) -> Date { t0.addingTimeInterval(seconds) }

    @Test("views are made when taken, a slice at a time, each site's once, as it stands at its newest evaluation; a forgotten site's is not taken")
    func viewsTakenInSlices() {
        let fleet = FleetState(thresholds: Self.thresholds, viewRefresh: .seconds(10))
        let sites = (0..<1_000).map { try! SiteID("slice-\($0)") }
        for site in sites { fleet.feed(Self.heartbeat(1, age: 0, site: site), now: Self.at(0)) }
        // A second heartbeat 30 s later reporting a 30 s old contact: every site semi-connected, a second view asked for.
        for site in sites { fleet.feed(Self.heartbeat(2, age: 30, site: site), now: Self.at(30)) }
        #expect(fleet.pendingViews == 1_000)
        #expect(fleet.forget(sites[500], now: Self.at(30), note: "by test"))
        var taken: [SiteView] = []
        var slices = 0
        while true {
            let output = fleet.takeOutput(limit: 300)
            if output.views.isEmpty { break }
            #expect(output.views.count <= 300)
            taken += output.views
            slices += 1
        }
        #expect(slices == 4)
        #expect(taken.map(\.site) == sites.filter { $0 != sites[500] }, "oldest first, each site once")
        #expect(taken.allSatisfy { $0.mode == .semiConnected && $0.lastHeartbeatAt == Self.at(30) })
        #expect(fleet.pendingViews == 0)

        // A standby lets its output go unmade.
        for site in sites.prefix(10) { fleet.feed(Self.heartbeat(3, age: 0, site: site), now: Self.at(31)) }
        #expect(fleet.pendingViews == 10)
        fleet.dropOutput()
        #expect(fleet.pendingViews == 0 && fleet.takeOutput().isEmpty)
    }

    @Test("a waiting view shows the site as its newest evaluation left it: a later heartbeat's evaluation, and the liveness an outage's catch-up would hide")
    func waitingViewIsNewest() {
        // A contact 20 s old: semi-connected (connected within 15 s), a view asked for at 0.
        let fleet = FleetState(thresholds: Self.thresholds, viewRefresh: .seconds(1000))
        fleet.feed(Self.heartbeat(1, age: 20), now: Self.at(0))
        #expect(fleet.records[Self.site]?.mode == .semiConnected)
        // 10 s later a heartbeat reports a newer contact, 24 s old: still semi-connected, no new view asked for.
        // Made at the first evaluation's instant, the view would see a contact 14 s old: connected.
        fleet.feed(Self.heartbeat(2, age: 24), now: Self.at(10))
        let first = fleet.takeOutput().views
        #expect(first.count == 1 && first.first?.mode == .semiConnected && first.first?.lastHeartbeatAt == Self.at(10), "\(first)")

        // Silent: stale at 40 s (interval 10 s), its view waits; the broker link drops at 41 and is back at 200.
        let quiet = FleetState(thresholds: Self.thresholds, viewRefresh: .seconds(1000))
        quiet.feed(Self.heartbeat(1, age: 0), now: Self.at(10))
        _ = quiet.takeOutput()
        quiet.runDue(now: Self.at(41))
        #expect(quiet.records[Self.site]?.liveness == .stale)
        quiet.setListening(false, now: Self.at(41))
        quiet.setListening(true, now: Self.at(200))
        // The catch-up moved its last contact forward by the outage; the view still says stale, as the event did.
        let output = quiet.takeOutput()
        #expect(output.events.contains { $0.type == .livenessChanged && $0.to == "stale" })
        #expect(output.views.map(\.liveness) == [.stale], "\(output.views)")
    }

    @Test("connected, then semi-connected with a countdown, then disconnected at the deadline; each event once")
    func countdown() {
        let fleet = FleetState(thresholds: Self.thresholds, viewRefresh: .seconds(10))
        fleet.feed(Self.heartbeat(1, age: 0), now: Self.at(0))
        #expect(fleet.records[Self.site]?.mode == .connected)
        // The presence that announced the site asked for its first view (no contact yet), the heartbeat
        // for the next: one view per site is taken, made as the site stands at its newest evaluation.
        let first = fleet.takeOutput()
        #expect(first.views.map(\.mode) == [.connected])
        #expect(fleet.pendingViews == 0)
        // The site's first mode is an event too (no `from`); a change carries the contact and deadline.
        let firstModes = first.events.filter { $0.type == .modeChanged }
        #expect(firstModes.map { "\($0.from ?? "first")->\($0.to ?? "-")" } == ["first->unknown", "unknown->connected"])
        #expect(firstModes.last?.contactAt == Self.t0 && firstModes.last?.deadline == Self.at(100))

        // The agent keeps reporting a growing age (Azure gone, site still talking to us).
        var views: [SiteView] = []
        var events: [FleetEvent] = []
        for second in stride(from: 10, through: 110, by: 10) {
            fleet.feed(Self.heartbeat(UInt64(second / 10 + 1), age: Double(second)), now: Self.at(Double(second)))
            fleet.runDue(now: Self.at(Double(second)))
            let output = fleet.takeOutput()
            views += output.views
            events += output.events
        }
        #expect(fleet.records[Self.site]?.mode == .disconnected)
        let modeChanges = events.filter { $0.type == .modeChanged }.map { "\($0.from!)->\($0.to!)" }
        #expect(modeChanges == ["connected->semi-connected", "semi-connected->disconnected"])
        #expect(events.filter { $0.type == .deadlineAlert }.map(\.level) == [.warning, .critical, .expired])
        // The retained view's remainingS counts down while semi-connected.
        let remaining = views.filter { $0.mode == .semiConnected }.compactMap(\.remainingS)
        #expect(remaining.count >= 3)
        #expect(remaining == remaining.sorted(by: >))
        #expect(views.last?.mode == .disconnected)
    }

    @Test("a certificate expiring before the budget sets an earlier deadline")
    func certificateFirst() throws {
        let fleet = FleetState(thresholds: Self.thresholds, viewRefresh: .seconds(10))
        fleet.feed(Self.heartbeat(1, age: 0, certificate: Self.at(30)), now: Self.at(0))
        let view = try #require(fleet.view(of: Self.site, now: Self.at(1)))
        #expect(view.deadlineReason == .certificate)
        #expect(view.deadline == Self.at(30))
        fleet.runDue(now: Self.at(30))
        #expect(fleet.records[Self.site]?.mode == .disconnected)
    }

    @Test("a silent agent goes stale, then offline, and still turns disconnected on time, projected")
    func silentSite() throws {
        let fleet = FleetState(thresholds: Self.thresholds, viewRefresh: .seconds(1000))
        fleet.feed(Self.heartbeat(1, age: 0), now: Self.at(0))
        _ = fleet.takeOutput()
        fleet.runDue(now: Self.at(31))  // 3 intervals of 10 s
        #expect(fleet.records[Self.site]?.liveness == .stale)
        fleet.runDue(now: Self.at(101))
        #expect(fleet.records[Self.site]?.liveness == .offline)
        #expect(fleet.records[Self.site]?.mode == .disconnected)
        let view = try #require(fleet.takeOutput().views.last)
        #expect(view.projected)
        #expect(view.mode == .disconnected)
    }

    @Test("an offline presence of an older session is ignored; a newer one counts")
    func presenceSessions() {
        let fleet = FleetState(thresholds: Self.thresholds, viewRefresh: .seconds(10))
        func presence(_ state: PresenceState, _ session: UInt64) -> SiteInput {
            .presence(Presence(site: Self.site, state: state, reason: state == .offline ? .lost : nil, session: session, at: Self.t0))
        }
        fleet.feed(presence(.online, 5), now: Self.at(0))
        #expect(fleet.feed(presence(.offline, 4), now: Self.at(1)) != .applied)
        #expect(fleet.records[Self.site]?.presence == .online)
        #expect(fleet.feed(presence(.offline, 5), now: Self.at(2)) == .applied)
        #expect(fleet.records[Self.site]?.presence == .offline)
        #expect(fleet.records[Self.site]?.liveness == .offline)
    }

    @Test("heartbeat seq gaps are counted, repeats and reordered ones dropped")
    func sequence() {
        let fleet = FleetState(thresholds: Self.thresholds, viewRefresh: .seconds(10))
        fleet.feed(Self.heartbeat(1, age: 0), now: Self.at(0))
        fleet.feed(Self.heartbeat(4, age: 0), now: Self.at(1))
        #expect(fleet.feed(Self.heartbeat(4, age: 0), now: Self.at(2)) != .applied)
        #expect(fleet.feed(Self.heartbeat(3, age: 0), now: Self.at(3)) != .applied)
        #expect(fleet.records[Self.site]?.seqGaps == 2)
        #expect(fleet.records[Self.site]?.duplicates == 2)
        // A new session starts a new sequence.
        #expect(fleet.feed(Self.heartbeat(1, age: 0, session: 2), now: Self.at(4)) == .applied)
    }

    @Test("restored records keep their deadlines: a site dark for most of its budget still turns disconnected on time")
    func restore() throws {
        let first = FleetState(thresholds: Self.thresholds, viewRefresh: .seconds(10))
        first.feed(Self.heartbeat(1, age: 0), now: Self.at(0))
        first.runDue(now: Self.at(90))
        let saved = first.takeDirty()
        #expect(saved.first?.mode == .semiConnected)

        let second = FleetState(thresholds: Self.thresholds, viewRefresh: .seconds(10))
        second.restore(saved, now: Self.at(95))
        #expect(second.records[Self.site]?.mode == .semiConnected)
        #expect(second.nextWake.map { $0 <= Self.at(100) } == true)
        second.runDue(now: Self.at(100))
        #expect(second.records[Self.site]?.mode == .disconnected)
        #expect(second.takeOutput().events.contains { $0.type == .modeChanged && $0.to == "disconnected" })
    }

    @Test("the schedule holds about one entry per site however many heartbeats arrive")
    func scheduleStaysSmall() {
        let fleet = FleetState(thresholds: Self.thresholds, viewRefresh: .seconds(1000))
        let sites = (0..<100).map { try! SiteID("s\($0)") }
        for round in 0..<50 {
            for site in sites {
                fleet.feed(Self.heartbeat(UInt64(round + 1), age: 0, site: site), now: Self.at(Double(round)))
            }
        }
        #expect(fleet.scheduledEntries <= 2 * sites.count)
        #expect(fleet.modes.connected == 100)
    }

    @Test("queue counts: a full count replaces every site's, a count of some sites only theirs; views go out for the sites whose counts moved")
    func queueCounts() throws {
        let fleet = FleetState(thresholds: Self.thresholds, viewRefresh: .seconds(600))
        let a = try SiteID("a"), b = try SiteID("b"), c = try SiteID("c")
        for site in [a, b, c] { fleet.feed(Self.heartbeat(1, age: 0, site: site), now: Self.at(0)) }
        _ = fleet.takeOutput()
        fleet.setQueue(
            QueueCountsChange(sites: nil, counts: [a: [.queued: 2], b: [.failed: 1, .succeeded: 4]], totals: [.queued: 2, .failed: 1, .succeeded: 4]),
            now: Self.at(1))
        #expect(Set(fleet.takeOutput().views.map(\.site)) == [a, b])
        #expect(fleet.view(of: a, now: Self.at(1))?.queue == QueueCounts(queued: 2))
        #expect(fleet.summary(now: Self.at(1)).queue.queued == 2 && fleet.summary(now: Self.at(1)).queue.succeeded == 4)
        // Some sites: a's first operation runs (a counted again), c was touched but has none, b not counted: b keeps its counts.
        fleet.setQueue(
            QueueCountsChange(sites: [a, c], counts: [a: [.queued: 1, .dispatching: 1]], totals: [.queued: 1, .dispatching: 1, .failed: 1, .succeeded: 4]),
            now: Self.at(2))
        #expect(fleet.takeOutput().views.map(\.site) == [a])
        #expect(fleet.view(of: a, now: Self.at(2))?.queue == QueueCounts(queued: 1, dispatching: 1))
        #expect(fleet.view(of: b, now: Self.at(2))?.queue == QueueCounts(failed: 1))
        #expect(fleet.summary(now: Self.at(2)).queue.dispatching == 1)
        // a's operations are done: its view shows none; a full count without b clears b's.
        fleet.setQueue(QueueCountsChange(sites: [a], counts: [:], totals: [.failed: 1, .succeeded: 6]), now: Self.at(3))
        #expect(fleet.takeOutput().views.map(\.site) == [a])
        #expect(fleet.view(of: a, now: Self.at(3))?.queue == QueueCounts())
        fleet.setQueue(QueueCountsChange(sites: nil, counts: [a: [.succeeded: 2]], totals: [.succeeded: 2]), now: Self.at(4))
        #expect(fleet.takeOutput().views.map(\.site) == [b])
        #expect(fleet.view(of: b, now: Self.at(4))?.queue == QueueCounts())
        #expect(fleet.summary(now: Self.at(4)).queue.failed == 0)
    }

    @Test("the summary counts modes and lists the nearest deadlines first")
    func summary() {
        let fleet = FleetState(thresholds: Self.thresholds, viewRefresh: .seconds(10))
        for (index, age) in [0.0, 50, 70, 20].enumerated() {
            fleet.feed(Self.heartbeat(1, age: age, site: try! SiteID("s\(index)")), now: Self.at(0))
        }
        let summary = fleet.summary(now: Self.at(0))
        #expect(summary.sites == 4)
        #expect(summary.modes.connected == 1)
        #expect(summary.modes.semiConnected == 3)
        #expect(summary.fleetMode == .degraded)
        #expect(summary.nearestDeadlines.map(\.site.rawValue) == ["s2", "s1", "s3", "s0"])
    }
}

extension FleetStateTests {
    @Test("the newest heartbeat's age is the truth: an older contact turns a connected site semi-connected; null erases nothing")
    func olderContactCounts() {
        let fleet = FleetState(thresholds: Self.thresholds, viewRefresh: .seconds(10))
        fleet.feed(Self.heartbeat(1, age: 0), now: Self.at(0))
        #expect(fleet.records[Self.site]?.mode == .connected)
        fleet.feed(Self.heartbeat(2, age: 50), now: Self.at(1))
        #expect(fleet.records[Self.site]?.mode == .semiConnected)
        #expect(fleet.records[Self.site]?.lastAzureContactAt == Self.at(-49))
        fleet.feed(Self.heartbeat(3, age: nil), now: Self.at(2))
        #expect(fleet.records[Self.site]?.lastAzureContactAt == Self.at(-49))
    }
}

extension FleetStateTests {
    @Test("a contact under a second earlier than the known one is transit jitter and ignored; a later one is taken")
    func contactJitter() {
        let fleet = FleetState(thresholds: Self.thresholds, viewRefresh: .seconds(10))
        fleet.feed(Self.heartbeat(1, age: 5), now: Self.at(10))
        fleet.feed(Self.heartbeat(2, age: 5.3), now: Self.at(10.1))  // 0.2 s earlier: jitter
        #expect(fleet.records[Self.site]?.lastAzureContactAt == Self.at(5))
        fleet.feed(Self.heartbeat(3, age: 4), now: Self.at(10.2))  // later: taken
        #expect(fleet.records[Self.site]?.lastAzureContactAt == Self.at(6.2))
    }
}

extension FleetStateTests {
    @Test("a certificate report with an error keeps the known expiry; an expired site stays disconnected")
    func certificateErrorKeepsExpiry() {
        let fleet = FleetState(thresholds: Self.thresholds, viewRefresh: .seconds(10))
        fleet.feed(Self.heartbeat(1, age: 0, certificate: Self.at(5)), now: Self.at(0))
        fleet.runDue(now: Self.at(6))
        #expect(fleet.records[Self.site]?.mode == .disconnected)
        let broken = SiteInput.heartbeat(
            Heartbeat(
                site: Self.site, session: 1, seq: 2, sentAt: Self.t0, azure: AzureReport(reachable: true, lastContactAgeS: 0, probe: "endpoints"),
                certificates: CertificateReport(earliestNotAfter: nil, source: nil, error: "cannot read /etc/kubernetes/pki/apiserver.crt")))
        fleet.feed(broken, now: Self.at(7))
        #expect(fleet.records[Self.site]?.mode == .disconnected)
        #expect(fleet.records[Self.site]?.earliestCertificateExpiry == Self.at(5))
    }

    @Test("after a renewal the alerts are armed again from the new level")
    func alertsRearm() {
        let fleet = FleetState(thresholds: Self.thresholds, viewRefresh: .seconds(10))
        fleet.feed(Self.heartbeat(1, age: 0, certificate: Self.at(5)), now: Self.at(0))
        fleet.runDue(now: Self.at(6))
        #expect(fleet.takeOutput().events.filter { $0.type == .deadlineAlert }.map(\.level) == [.warning, .critical, .expired])
        // A renewed certificate that is itself short-lived: critical now, expired later, each announced.
        fleet.feed(Self.heartbeat(2, age: 0, certificate: Self.at(20)), now: Self.at(7))
        #expect(fleet.records[Self.site]?.mode == .connected)
        fleet.runDue(now: Self.at(21))
        #expect(fleet.records[Self.site]?.mode == .disconnected)
        #expect(fleet.takeOutput().events.filter { $0.type == .deadlineAlert }.map(\.level) == [.expired])
    }

    @Test("a stored record from an older version, without the newer fields, still loads")
    func oldRecordsLoad() throws {
        let old = #"{"site":"store-1","lastAzureContactAt":"2026-11-01T00:00:00.000Z","mode":"semi-connected"}"#
        let record = try FleetJSON.decode(SiteRecord.self, from: Array(old.utf8))
        #expect(record.mode == .semiConnected && record.heartbeatIntervalS == 10 && record.seqGaps == 0)
    }

    @Test("a sequence jump to the largest number is counted without trapping")
    func sequenceOverflow() {
        let fleet = FleetState(thresholds: Self.thresholds, viewRefresh: .seconds(10))
        fleet.feed(Self.heartbeat(0, age: 0), now: Self.at(0))
        fleet.feed(Self.heartbeat(.max, age: 0), now: Self.at(1))
        fleet.feed(Self.heartbeat(0, age: 0, session: 2), now: Self.at(2))
        fleet.feed(Self.heartbeat(.max, age: 0, session: 2), now: Self.at(3))
        #expect(fleet.records[Self.site]?.seqGaps == .max)
    }
}

@Suite("fleet state: sites are announced, capped and forgotten")
struct SiteMembershipTests {
    @Test("a heartbeat or status of an unknown site makes no site; a presence does; the cap refuses the next; forget removes every trace; a retained presence does not revive, a live one does")
    func membership() throws {
        let fleet = FleetState(thresholds: FleetStateTests.thresholds, viewRefresh: .seconds(10))
        fleet.siteLimit = 2
        let a = try SiteID("a"), b = try SiteID("b"), c = try SiteID("c")
        let now = FleetStateTests.at(0)
        #expect(fleet.ingest(FleetStateTests.heartbeat(1, age: 0, site: a), now: now) == .unannounced)
        #expect(fleet.ingest(.status(SiteStatus(site: a, session: 1, at: now)), now: now) == .unannounced)
        #expect(fleet.records.isEmpty)
        for site in [a, b] {
            #expect(fleet.ingest(.presence(Presence(site: site, state: .online, session: 1, at: now)), now: now) == .applied)
        }
        #expect(fleet.ingest(.presence(Presence(site: c, state: .online, session: 1, at: now)), now: now) == .overLimit)
        #expect(fleet.ingest(FleetStateTests.heartbeat(1, age: 0, site: a), now: now) == .applied)
        #expect(fleet.modes[.connected] == 1 && fleet.modes[.unknown] == 1)
        _ = fleet.takeOutput()

        #expect(fleet.forget(a, now: now, note: "by test"))
        #expect(!fleet.forget(a, now: now, note: "by test"))
        #expect(fleet.records[a] == nil && fleet.modes[.connected] == 0 && fleet.liveness[.online] == 1)
        #expect(fleet.summary(now: now).sites == 1 && fleet.deadlineEntries().isEmpty)
        let output = fleet.takeOutput()
        #expect(output.cleared == [a] && output.events.map(\.type) == [.siteForgotten])
        #expect(fleet.takeDirty().map(\.site) == [b], "a forgotten site is not written back")
        // Nothing scheduled for it comes back.
        fleet.runDue(now: FleetStateTests.at(10_000))
        #expect(fleet.records[a] == nil)
        // Its retained presence replayed: still forgotten. Its agent back: made again.
        #expect(fleet.ingest(.presence(Presence(site: a, state: .online, session: 1, at: now)), now: now, live: false) != .applied)
        #expect(fleet.ingest(.presence(Presence(site: a, state: .online, session: 2, at: now)), now: now) == .applied)
        #expect(fleet.takeRevived() == [a] && fleet.records[a] != nil)

        // Forgotten and back before the output was taken: its clear is dropped (sent after the new
        // view, it would erase it) and its new view goes out.
        #expect(fleet.forget(a, now: now, note: "by test"))
        #expect(fleet.ingest(.presence(Presence(site: a, state: .online, session: 3, at: now)), now: now) == .applied)
        let again = fleet.takeOutput()
        #expect(!again.cleared.contains(a) && again.views.filter { $0.site == a }.count == 1, "\(again.cleared) \(again.views.map(\.site))")
    }
}

@Suite("fleet state: what is written to the store, and when")
struct WriteRuleTests {
    @Test("a steady heartbeat is written with the minute's sweep, not at once; a new session, a gap or a mode change at once")
    func steadyHeartbeatsWait() throws {
        let fleet = FleetState(thresholds: FleetStateTests.thresholds, viewRefresh: .seconds(1000))
        let site = FleetStateTests.site
        fleet.feed(FleetStateTests.heartbeat(1, age: 0), now: FleetStateTests.at(0))
        #expect(fleet.takeDirty().map(\.site) == [site], "a new site is written at once")
        for seq in 2...5 {
            fleet.feed(FleetStateTests.heartbeat(UInt64(seq), age: 0), now: FleetStateTests.at(Double(seq)))
        }
        #expect(fleet.takeDirty().isEmpty, "steady heartbeats were written every time")
        #expect(fleet.sweepUnwritten() == 1)
        #expect(fleet.takeDirty().first?.lastSeq == 5, "the sweep writes the newest record")
        // A gap is news: written at once.
        fleet.feed(FleetStateTests.heartbeat(9, age: 0), now: FleetStateTests.at(6))
        #expect(fleet.takeDirty().first?.seqGaps == 3)
        // A new session too.
        fleet.feed(FleetStateTests.heartbeat(1, age: 0, session: 2), now: FleetStateTests.at(7))
        #expect(fleet.takeDirty().first?.session == 2)
        // Azure gone: the mode changes 15 s later, and that is written at once.
        fleet.feed(FleetStateTests.heartbeat(2, age: 1, session: 2), now: FleetStateTests.at(8))
        _ = fleet.takeDirty()
        fleet.runDue(now: FleetStateTests.at(30))
        #expect(fleet.takeDirty().first?.mode == .semiConnected)
    }
}

@Suite("fleet state: the aggregator's own broker link")
struct ListeningTests {
    @Test("while the aggregator cannot hear, liveness stands still and views are projected; modes follow real time; silence resumes counting after")
    func deafness() throws {
        let fleet = FleetState(thresholds: FleetStateTests.thresholds, viewRefresh: .seconds(1000))
        let site = FleetStateTests.site
        fleet.feed(FleetStateTests.heartbeat(1, age: 0), now: FleetStateTests.at(0))  // interval 10 s: stale after 30 s, offline after 100 s
        fleet.setListening(false, now: FleetStateTests.at(5))
        fleet.runDue(now: FleetStateTests.at(200))
        #expect(fleet.records[site]?.liveness == .online, "the outage counted as the site's silence")
        #expect(fleet.view(of: site, now: FleetStateTests.at(200))?.projected == true)
        // The mode is Azure's business and goes on: 15 s without contact is semi-connected, 100 s past the budget.
        #expect(fleet.records[site]?.mode == .disconnected)
        fleet.setListening(true, now: FleetStateTests.at(200))
        // 5 s of silence before the outage count; 25 more after it make 30: stale then, not before.
        fleet.runDue(now: FleetStateTests.at(224))
        #expect(fleet.view(of: site, now: FleetStateTests.at(224))?.liveness == .online)
        #expect(fleet.view(of: site, now: FleetStateTests.at(224))?.projected == false)
        fleet.runDue(now: FleetStateTests.at(226))
        #expect(fleet.records[site]?.liveness == .stale)
        #expect(!fleet.takeOutput().events.contains { $0.type == .livenessChanged && $0.to == "offline" })
    }
}

extension FleetState {
    /// Ingests `input`, first announcing its site with an online presence of the same session
    /// when the state does not know it yet, as an agent does (a site exists once it has announced itself).
    @discardableResult
    func feed(_ input: SiteInput, now: Date, live: Bool = true) -> ApplyOutcome {
        if records[input.site] == nil, case .heartbeat(let h) = input {
            ingest(.presence(Presence(site: h.site, state: .online, session: h.session, at: now, instance: h.instance)), now: now, live: live)
        }
        return ingest(input, now: now, live: live)
    }
}
