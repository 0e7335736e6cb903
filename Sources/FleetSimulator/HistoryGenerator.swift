public import FleetCore
#if canImport(Glibc)
import Glibc
#endif

#if canImport(FoundationEssentials)
public import FoundationEssentials
#else
public import Foundation
#endif

/// A made-up past for a fleet: the events an aggregator would have published for a site over
/// `days`, as it would have published them (first mode, mode changes with the contact and
/// deadline, liveness changes when the whole site went dark, deadline alerts). For the
/// history benchmark and the dashboard's screenshots; deterministic for a seed.
///
/// Each site is connected for stretches of 14 days on average; then Azure is gone for a while:
/// 70% of outages last 20 minutes to 6 hours, 25% 6 hours to 5 days, 5% 5 to 40 days (past a
/// 30-day budget: disconnected). In 30% of outages the whole site goes dark (the agent's
/// liveness goes stale, offline, and online again when it is back).
public struct HistoryGenerator: Sendable {
    public var thresholds: Thresholds
    public var seed: UInt64

    public init(thresholds: Thresholds = Thresholds(), seed: UInt64 = 42) {
        self.thresholds = thresholds
        self.seed = seed
    }

    /// The events of site number `index` (named `site`) from `start` to `end`, in time order.
    public func events(site: SiteID, index: Int, from start: Date, to end: Date) -> [FleetEvent] {
        var random = SplitMix(seed: seed &+ UInt64(index) &* 0x9E37_79B9_7F4A_7C15)
        let within = thresholds.connectedWithin.secondsValue
        let budget = thresholds.budget.secondsValue
        let warn = thresholds.warnBefore.secondsValue
        let critical = thresholds.criticalBefore.secondsValue
        // Sites join over the first days, not all at one instant.
        var t = start.addingTimeInterval(random.unit() * 3 * 86_400)
        var events = [
            FleetEvent(type: .modeChanged, site: site, at: t, to: "connected", contactAt: t, deadline: t.addingTimeInterval(budget))
        ]
        while true {
            t = t.addingTimeInterval(random.exponential(mean: 14 * 86_400))  // connected until contact is lost
            let r = random.unit()
            let length =
                r < 0.70 ? 1_200 + random.unit() * (6 * 3_600 - 1_200)
                : r < 0.95 ? 6 * 3_600 + random.unit() * (5 * 86_400 - 6 * 3_600) : 5 * 86_400 + random.unit() * 35 * 86_400
            let contact = t
            let deadline = contact.addingTimeInterval(budget)
            let back = contact.addingTimeInterval(length)
            var outage: [FleetEvent] = [
                FleetEvent(
                    type: .modeChanged, site: site, at: contact.addingTimeInterval(within), from: "connected", to: "semi-connected",
                    contactAt: contact, deadline: deadline)
            ]
            for (level, before) in [(AlertLevel.warning, warn), (.critical, critical), (.expired, 0)] where length > budget - before {
                outage.append(
                    FleetEvent(type: .deadlineAlert, site: site, at: deadline.addingTimeInterval(-before), level: level, remainingS: before))
            }
            if length > budget {
                outage.append(
                    FleetEvent(
                        type: .modeChanged, site: site, at: deadline, from: "semi-connected", to: "disconnected", contactAt: contact,
                        deadline: deadline))
            }
            if random.unit() < 0.3 {
                outage.append(FleetEvent(type: .livenessChanged, site: site, at: contact.addingTimeInterval(30), from: "online", to: "stale"))
                outage.append(FleetEvent(type: .livenessChanged, site: site, at: contact.addingTimeInterval(100), from: "stale", to: "offline"))
                outage.append(FleetEvent(type: .livenessChanged, site: site, at: back, from: "offline", to: "online"))
            }
            outage.append(
                FleetEvent(
                    type: .modeChanged, site: site, at: back, from: length > budget ? "disconnected" : "semi-connected", to: "connected",
                    contactAt: back, deadline: back.addingTimeInterval(budget)))
            outage.sort { $0.at < $1.at }
            for event in outage where event.at < end { events.append(event) }
            if back >= end { return events }
            t = back
        }
    }
}

/// A small deterministic generator (SplitMix64).
struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// In [0, 1).
    mutating func unit() -> Double { Double(next() >> 11) / Double(1 << 53) }

    mutating func exponential(mean: Double) -> Double { -mean * log(1 - unit()) }
}
