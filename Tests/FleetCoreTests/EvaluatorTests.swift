import FleetCore
import Foundation
import Testing

let t0 = RFC3339.parse("2026-11-01T00:00:00.000Z")!
let second: TimeInterval = 1
let minute: TimeInterval = 60
let hour: TimeInterval = 3600
let day: TimeInterval = 86_400
let ms: TimeInterval = 0.001

func at(_ offset: TimeInterval) -> Date { t0.addingTimeInterval(offset) }

/// The same instant at FleetCore's millisecond resolution.
func same(_ a: Date?, _ b: Date?) -> Bool {
    guard let a, let b else { return a == nil && b == nil }
    return abs(a.timeIntervalSince(b)) < 0.0005
}

/// A site heard from at `now` (online), with the given contact and certificate expiry.
func known(contact: TimeInterval?, certificate: TimeInterval? = nil, seen: TimeInterval? = nil, expiredAt: TimeInterval? = nil)
    -> SiteKnowledge
{
    SiteKnowledge(
        lastAzureContactAt: contact.map(at), earliestCertificateExpiry: certificate.map(at), lastSeenAt: seen.map(at),
        expiredAt: expiredAt.map(at))
}

@Suite("connectivity modes at every boundary")
struct ModeBoundaryTests {
    struct Case: CustomTestStringConvertible, Sendable {
        var name: String
        var knowledge: SiteKnowledge
        var now: TimeInterval
        var mode: ConnectivityMode
        var alert: AlertLevel
        var testDescription: String { name }
    }

    static let cases: [Case] = [
        Case(name: "contact just now", knowledge: known(contact: 0), now: 0, mode: .connected, alert: .none),
        Case(name: "contact exactly 15 minutes old", knowledge: known(contact: 0), now: 15 * minute, mode: .connected, alert: .none),
        Case(name: "contact 15 minutes and 1 ms old", knowledge: known(contact: 0), now: 15 * minute + ms, mode: .semiConnected, alert: .none),
        Case(name: "contact 22 days old", knowledge: known(contact: 0), now: 22 * day, mode: .semiConnected, alert: .none),
        Case(name: "exactly 7 days left", knowledge: known(contact: 0), now: 23 * day, mode: .semiConnected, alert: .warning),
        Case(name: "7 days and 1 ms left", knowledge: known(contact: 0), now: 23 * day - ms, mode: .semiConnected, alert: .none),
        Case(name: "exactly 2 days left", knowledge: known(contact: 0), now: 28 * day, mode: .semiConnected, alert: .critical),
        Case(name: "1 ms before the deadline", knowledge: known(contact: 0), now: 30 * day - ms, mode: .semiConnected, alert: .critical),
        Case(name: "deadline exactly now", knowledge: known(contact: 0), now: 30 * day, mode: .disconnected, alert: .expired),
        Case(name: "long past the deadline", knowledge: known(contact: 0), now: 90 * day, mode: .disconnected, alert: .expired),
        Case(name: "never any contact", knowledge: known(contact: nil, seen: 0), now: 0, mode: .unknown, alert: .none),
        Case(
            name: "certificate expires before the budget: connected but critical",
            knowledge: known(contact: 0, certificate: 1 * day), now: 0, mode: .connected, alert: .critical),
        Case(
            name: "certificate expired while contact is recent",
            knowledge: known(contact: 0, certificate: 1 * day), now: 1 * day, mode: .disconnected, alert: .expired),
        Case(
            name: "certificate after the budget does not matter",
            knowledge: known(contact: 0, certificate: 60 * day), now: 29 * day, mode: .semiConnected, alert: .critical),
        Case(
            name: "remembered expiry with no newer contact",
            knowledge: known(contact: 0, expiredAt: 30 * day), now: 31 * day, mode: .disconnected, alert: .expired),
        Case(
            name: "remembered expiry cleared by a newer contact with valid certificates",
            knowledge: known(contact: 40 * day, certificate: 80 * day, expiredAt: 30 * day), now: 40 * day, mode: .connected,
            alert: .none),
        Case(
            name: "remembered expiry kept when the newer contact has expired certificates",
            knowledge: known(contact: 40 * day, certificate: 35 * day, expiredAt: 30 * day), now: 40 * day, mode: .disconnected,
            alert: .expired),
    ]

    @Test("mode and alert", arguments: cases)
    func modeAndAlert(_ c: Case) {
        let evaluation = ConnectivityEvaluator.evaluate(c.knowledge, thresholds: Thresholds(), now: at(c.now))
        #expect(evaluation.mode == c.mode)
        #expect(evaluation.alert == c.alert)
    }

    @Test("the deadline is the earlier of contact + budget and the certificate expiry, with its reason")
    func deadlineAndReason() {
        let budget = ConnectivityEvaluator.evaluate(known(contact: 0, certificate: 60 * day), thresholds: Thresholds(), now: at(0))
        #expect(same(budget.deadline, at(30 * day)))
        #expect(budget.deadlineReason == .budget)
        #expect(budget.remainingS == 30 * day)
        let certificate = ConnectivityEvaluator.evaluate(known(contact: 0, certificate: 10 * day), thresholds: Thresholds(), now: at(day))
        #expect(same(certificate.deadline, at(10 * day)))
        #expect(certificate.deadlineReason == .certificate)
        #expect(certificate.remainingS == 9 * day)
        let none = ConnectivityEvaluator.evaluate(known(contact: nil), thresholds: Thresholds(), now: at(0))
        #expect(none.deadline == nil && none.deadlineReason == nil && none.remainingS == nil)
    }

    @Test("passing a deadline is remembered in expiredAt")
    func expiryIsRemembered() {
        let evaluation = ConnectivityEvaluator.evaluate(known(contact: 0), thresholds: Thresholds(), now: at(31 * day))
        #expect(same(evaluation.expiredAt, at(30 * day)))
        let before = ConnectivityEvaluator.evaluate(known(contact: 0), thresholds: Thresholds(), now: at(29 * day))
        #expect(before.expiredAt == nil)
    }

    @Test("clock skew: a site whose wall clock is hours off is judged by receive time minus age")
    func clockSkew() throws {
        let site = try SiteID("store-0042")
        let received = at(10 * day)
        func heartbeat(sentAt: Date) -> Heartbeat {
            Heartbeat(site: site, session: 1, seq: 1, sentAt: sentAt, azure: AzureReport(reachable: false, lastContactAgeS: 3600, probe: "endpoints"))
        }
        let honest = heartbeat(sentAt: received)
        let fast = heartbeat(sentAt: received.addingTimeInterval(5 * hour))
        let slow = heartbeat(sentAt: received.addingTimeInterval(-7 * hour))
        let contacts = [honest, fast, slow].map { $0.azureContact(receivedAt: received) }
        #expect(contacts == Array(repeating: received.addingTimeInterval(-3600), count: 3))
        let evaluations = contacts.map {
            ConnectivityEvaluator.evaluate(SiteKnowledge(lastAzureContactAt: $0, lastSeenAt: received), thresholds: Thresholds(), now: received)
        }
        #expect(Set(evaluations).count == 1)
        #expect(evaluations[0].mode == .semiConnected)
        // Never in contact, and nonsense ages, give no contact time.
        var never = honest
        never.azure.lastContactAgeS = nil
        #expect(never.azureContact(receivedAt: received) == nil)
        never.azure.lastContactAgeS = -5
        #expect(never.azureContact(receivedAt: received) == nil)
    }
}

@Suite("liveness and projection")
struct LivenessTests {
    static let cases: [(silence: TimeInterval, liveness: Liveness)] = [
        (0, .online), (30 * second, .online), (30 * second + ms, .stale), (100 * second, .stale), (100 * second + ms, .offline),
    ]

    @Test("with a 10 s heartbeat: online up to 3 intervals, stale up to 10, then offline", arguments: cases)
    func liveness(silence: TimeInterval, liveness: Liveness) {
        let evaluation = ConnectivityEvaluator.evaluate(known(contact: 0, seen: 0), thresholds: Thresholds(), now: at(silence))
        #expect(evaluation.liveness == liveness)
        #expect(evaluation.projected == (liveness != .online))
    }

    @Test("an offline presence makes the site offline at once; never heard of is offline")
    func offlinePresence() {
        var site = known(contact: 0, seen: 0)
        site.presenceOffline = true
        #expect(ConnectivityEvaluator.evaluate(site, thresholds: Thresholds(), now: at(1)).liveness == .offline)
        #expect(ConnectivityEvaluator.evaluate(known(contact: 0), thresholds: Thresholds(), now: at(1)).liveness == .offline)
    }

    @Test("a silent agent does not stop the clock: a site that went dark still turns disconnected on time")
    func darkSiteProjects() {
        let site = known(contact: 0, seen: 0)
        let before = ConnectivityEvaluator.evaluate(site, thresholds: Thresholds(), now: at(30 * day - ms))
        #expect(before.mode == .semiConnected && before.projected && before.liveness == .offline)
        let after = ConnectivityEvaluator.evaluate(site, thresholds: Thresholds(), now: at(30 * day))
        #expect(after.mode == .disconnected && after.projected)
    }
}

@Suite("next-change instants")
struct NextChangeTests {
    @Test("walking from one next-change instant to the next visits every change and nothing else")
    func walkTheTimeline() {
        var site = known(contact: 0, seen: 0)
        var now = at(0)
        var seen: [(Date, ConnectivityMode, AlertLevel, Liveness, Bool)] = []
        var previous = ConnectivityEvaluator.evaluate(site, thresholds: Thresholds(), now: now)
        site.previousMode = previous.mode
        site.modeSince = previous.modeSince
        seen.append((now, previous.mode, previous.alert, previous.liveness, previous.stable))
        for _ in 0..<20 {
            guard let next = previous.nextChangeAt else { break }
            #expect(next > now)
            // One millisecond earlier nothing has changed yet.
            let justBefore = ConnectivityEvaluator.evaluate(site, thresholds: Thresholds(), now: next.addingTimeInterval(-ms))
            #expect(justBefore.mode == previous.mode && justBefore.alert == previous.alert && justBefore.liveness == previous.liveness && justBefore.stable == previous.stable)
            now = next
            let current = ConnectivityEvaluator.evaluate(site, thresholds: Thresholds(), now: now)
            #expect(
                current.mode != previous.mode || current.alert != previous.alert || current.liveness != previous.liveness
                    || current.stable != previous.stable, "nothing changed at \(RFC3339.format(now))")
            site.previousMode = current.mode
            site.modeSince = current.modeSince
            site.expiredAt = current.expiredAt
            seen.append((now, current.mode, current.alert, current.liveness, current.stable))
            previous = current
        }
        #expect(previous.nextChangeAt == nil, "a disconnected, offline site changes no more by itself")
        let expected: [(TimeInterval, ConnectivityMode, AlertLevel, Liveness, Bool)] = [
            (0, .connected, .none, .online, false),
            (30 * second + ms, .connected, .none, .stale, false),
            (100 * second + ms, .connected, .none, .offline, false),
            (120 * second, .connected, .none, .offline, true),
            (15 * minute + ms, .semiConnected, .none, .offline, false),
            (23 * day, .semiConnected, .warning, .offline, false),
            (28 * day, .semiConnected, .critical, .offline, false),
            (30 * day, .disconnected, .expired, .offline, false),
        ]
        #expect(seen.count == expected.count)
        for (got, want) in zip(seen, expected) {
            #expect(same(got.0, at(want.0)))
            #expect(got.1 == want.1 && got.2 == want.2 && got.3 == want.3 && got.4 == want.4, "at \(RFC3339.format(got.0))")
        }
    }

    @Test("modeSince carries over while the mode holds, and stability follows stableFor")
    func modeSinceAndStability() {
        var site = known(contact: 0)
        site.previousMode = .connected
        site.modeSince = at(-10 * minute)
        let evaluation = ConnectivityEvaluator.evaluate(site, thresholds: Thresholds(), now: at(0))
        #expect(evaluation.modeSince == at(-10 * minute))
        #expect(evaluation.stable)
        site.modeSince = at(-1 * minute)
        let young = ConnectivityEvaluator.evaluate(site, thresholds: Thresholds(), now: at(0))
        #expect(!young.stable)
        #expect(same(young.nextChangeAt, at(1 * minute)), "stability is the next change")
    }

    @Test("thresholds shrunk for a demo run 30 days in seconds")
    func shrunkThresholds() throws {
        let fast = Thresholds(
            connectedWithin: try DurationFormat.parse("2s"), budget: try DurationFormat.parse("60s"),
            warnBefore: try DurationFormat.parse("20s"), criticalBefore: try DurationFormat.parse("5s"),
            stableFor: try DurationFormat.parse("1s"))
        #expect(fast.problem == nil)
        let evaluation = ConnectivityEvaluator.evaluate(known(contact: 0, seen: 0), thresholds: fast, now: at(56))
        #expect(evaluation.mode == .semiConnected && evaluation.alert == .critical)
        #expect(same(evaluation.nextChangeAt, at(60)))
    }

    @Test("inconsistent thresholds are reported")
    func badThresholds() {
        var t = Thresholds()
        t.criticalBefore = .seconds(8 * 86_400)
        #expect(t.problem != nil)
        t = Thresholds()
        t.budget = .seconds(60)
        #expect(t.problem != nil)
        t = Thresholds()
        t.offlineAfterIntervals = 2
        #expect(t.problem != nil)
        #expect(Thresholds().problem == nil)
    }
}
