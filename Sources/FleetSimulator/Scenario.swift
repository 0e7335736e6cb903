public import FleetCore
import YAMLReader

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// What a simulated fleet does: how many sites, in which regions, and what happens to them
/// when. Read from YAML (`edgefleet simulate --scenario FILE`) or built from flags.
///
/// ```yaml
/// sites: 50
/// prefix: store
/// heartbeatInterval: 2s
/// regions: {eu: 20, us: 30}        # the first 20 sites are eu, the next 30 us
/// events:
///   - {at: 0s, sites: 5, never: true}               # never reached Azure: unknown
///   - {at: 0s, sites: 10, contactAge: 3m}            # lost Azure 3 minutes ago
///   - {at: 0s, sites: 4, contactAge: 40m}            # lost it long ago: past the budget
///   - {at: 0s, sites: 3, certificateExpiresIn: 4m}  # certificates that expire early
///   - {at: 0s, sites: 2, flap: 20s}                  # Azure link up and down every 20 s
///   - {at: 30s, sites: 2, die: true}                 # the agent dies without a clean disconnect
///   - {at: 0s, region: eu, lose: true}               # the WAN link of a region goes ...
///   - {at: 5m, region: eu, restore: true}            # ... and comes back for all its sites at once
/// ```
///
/// An event's sites are `sites: N` (the next N sites no earlier `sites:` event took, in
/// order), `region: NAME`, or `ids: [...]`. Times are wall-clock from the start: play the
/// 30-day budget in minutes by giving the aggregator short thresholds (`--budget 30m`).
public struct Scenario: Sendable, Hashable {
    public var sites: Int
    public var prefix: String
    public var heartbeatInterval: Duration
    /// Sites per region, in order; sites after these have no region.
    public var regions: [(name: String, count: Int)]
    public var events: [Event]

    public static func == (a: Scenario, b: Scenario) -> Bool {
        a.sites == b.sites && a.prefix == b.prefix && a.heartbeatInterval == b.heartbeatInterval && a.events == b.events
            && a.regions.map(\.name) == b.regions.map(\.name) && a.regions.map(\.count) == b.regions.map(\.count)
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(sites)
        hasher.combine(prefix)
    }

    public init(sites: Int, prefix: String = "site", heartbeatInterval: Duration = .seconds(5), regions: [(name: String, count: Int)] = [], events: [Event] = []) {
        self.sites = sites
        self.prefix = prefix
        self.heartbeatInterval = heartbeatInterval
        self.regions = regions
        self.events = events
    }

    /// Which sites an event applies to.
    public enum Selection: Sendable, Hashable {
        case count(Int)
        case region(String)
        case ids([String])
    }

    /// What happens to the selected sites.
    public enum Action: Sendable, Hashable {
        /// The site has never reached Azure (its heartbeats report no contact).
        case never
        /// The site lost Azure this long ago, and has not reached it since.
        case contactAge(Duration)
        /// The site loses Azure now.
        case lose
        /// The site reaches Azure again now.
        case restore
        /// The site's earliest certificate expires this long after the event.
        case certificateExpiresIn(Duration)
        /// The Azure link goes down and up every period.
        case flap(Duration)
        /// The agent dies without a clean disconnect (its Last Will announces it).
        case die
        /// A dead agent starts again.
        case revive
    }

    public struct Event: Sendable, Hashable {
        public var at: Duration
        public var selection: Selection
        public var action: Action

        public init(at: Duration, selection: Selection, action: Action) {
            self.at = at
            self.selection = selection
            self.action = action
        }
    }

    public struct Problem: Error, Sendable, CustomStringConvertible {
        public var description: String
    }

    /// The site ids, `prefix-001` ... (as wide as the count needs, at least 3 digits).
    public var siteIDs: [SiteID] {
        let width = max(3, String(sites).count)
        return (1...max(1, sites)).prefix(sites).map { i in
            let number = String(i)
            return try! SiteID("\(prefix)-\(String(repeating: "0", count: width - number.count))\(number)")
        }
    }

    /// Each site's region, by index.
    public var regionOfSite: [String?] {
        var result: [String?] = []
        for region in regions { result += Array(repeating: region.name, count: region.count) }
        return Array((result + Array(repeating: nil, count: max(0, sites - result.count))).prefix(sites))
    }

    /// The events with their sites resolved to indices, in time order (stable).
    public func resolved() throws(Problem) -> [(at: Duration, sites: [Int], action: Action)] {
        let ids = siteIDs.map(\.rawValue)
        let regionOf = regionOfSite
        var next = 0
        var result: [(at: Duration, sites: [Int], action: Action)] = []
        for (number, event) in events.enumerated() {
            let indices: [Int]
            switch event.selection {
            case .count(let n):
                guard n >= 0, next + n <= sites else {
                    throw Problem(description: "events[\(number)]: \(n) more sites asked for, but only \(sites - next) of \(sites) are left")
                }
                indices = Array(next..<(next + n))
                next += n
            case .region(let name):
                indices = regionOf.indices.filter { regionOf[$0] == name }
                if indices.isEmpty { throw Problem(description: "events[\(number)]: no site is in region '\(name)'") }
            case .ids(let list):
                indices = try list.map { id throws(Problem) in
                    guard let index = ids.firstIndex(of: id) else { throw Problem(description: "events[\(number)]: no site '\(id)'") }
                    return index
                }
            }
            result.append((event.at, indices, event.action))
        }
        return result.enumerated().sorted { a, b in a.element.at != b.element.at ? a.element.at < b.element.at : a.offset < b.offset }.map(\.element)
    }

    /// Validates the whole scenario.
    public func validate() throws(Problem) {
        guard (1...100_000).contains(sites) else { throw Problem(description: "sites: must be between 1 and 100000, got \(sites)") }
        if let problem = SiteID.problem(with: prefix + "-1") { throw Problem(description: "prefix: \(problem)") }
        if String(sites).count + prefix.count + 1 > 63 { throw Problem(description: "prefix: too long for \(sites) site ids") }
        guard heartbeatInterval >= .milliseconds(100) else { throw Problem(description: "heartbeatInterval: at least 100ms") }
        let inRegions = regions.reduce(0) { $0 + $1.count }
        guard inRegions <= sites else { throw Problem(description: "regions: \(inRegions) sites in regions, but the fleet has \(sites)") }
        for region in regions where region.count < 1 || SiteID.problem(with: region.name) != nil {
            throw Problem(description: "regions.\(region.name): a name of a-z, 0-9 and '-' with at least one site")
        }
        _ = try resolved()
    }

    // MARK: - YAML

    /// Reads a scenario file; every problem names its key.
    public static func parse(yaml text: String) throws(Problem) -> Scenario {
        let node: YAMLNode
        do {
            guard let parsed = try YAMLNode.parse(text) else { throw Problem(description: "the scenario is empty") }
            node = parsed
        } catch let problem as Problem {
            throw problem
        } catch {
            throw Problem(description: "not YAML: \(error)")
        }
        guard let mapping = node.mapping else { throw Problem(description: "a scenario is a mapping (sites:, events: ...)") }
        let known: Set<String> = ["sites", "prefix", "heartbeatInterval", "regions", "events"]
        for pair in mapping {
            guard let key = pair.key.string, known.contains(key) else {
                throw Problem(description: "unknown key '\(pair.key.string ?? "?")' (line \(pair.key.line)); known: \(known.sorted().joined(separator: ", "))")
            }
        }
        var scenario = Scenario(sites: 50)
        if let text = node["sites"]?.string {
            guard let n = Int(text) else { throw Problem(description: "sites: a whole number, got '\(text)'") }
            scenario.sites = n
        }
        if let prefix = node["prefix"]?.string { scenario.prefix = prefix }
        if let text = node["heartbeatInterval"]?.string { scenario.heartbeatInterval = try duration(text, "heartbeatInterval") }
        for pair in node["regions"]?.mapping ?? [] {
            guard let name = pair.key.string, let count = pair.value.string.flatMap(Int.init) else {
                throw Problem(description: "regions: NAME: COUNT pairs (line \(pair.key.line))")
            }
            scenario.regions.append((name, count))
        }
        for (number, item) in (node["events"]?.sequence ?? []).enumerated() {
            scenario.events.append(try event(item, number))
        }
        try scenario.validate()
        return scenario
    }

    static func duration(_ text: String, _ key: String) throws(Problem) -> Duration {
        do { return try DurationFormat.parse(text) } catch { throw Problem(description: "\(key): \(error.description)") }
    }

    static func event(_ node: YAMLNode, _ number: Int) throws(Problem) -> Event {
        let key = "events[\(number)]"
        guard let pairs = node.mapping else { throw Problem(description: "\(key): a mapping like {at: 0s, sites: 5, lose: true}") }
        let keys = Set(pairs.compactMap(\.key.string))
        let at = try node["at"]?.string.map { text throws(Problem) in try duration(text, "\(key).at") } ?? .zero
        let selection: Selection
        switch (node["sites"]?.string, node["region"]?.string, node["ids"]?.sequence) {
        case (let n?, nil, nil):
            guard let count = Int(n) else { throw Problem(description: "\(key).sites: a whole number, got '\(n)'") }
            selection = .count(count)
        case (nil, let region?, nil): selection = .region(region)
        case (nil, nil, let ids?): selection = .ids(ids.compactMap(\.string))
        default: throw Problem(description: "\(key): say which sites with exactly one of sites: N, region: NAME or ids: [...]")
        }
        let actions = keys.subtracting(["at", "sites", "region", "ids"])
        guard actions.count == 1, let name = actions.first else {
            throw Problem(
                description: "\(key): exactly one action of never, contactAge, lose, restore, certificateExpiresIn, flap, die, revive; got \(actions.sorted())")
        }
        let value = node[name]?.string ?? ""
        let action: Action
        switch name {
        case "never": action = .never
        case "lose": action = .lose
        case "restore": action = .restore
        case "die": action = .die
        case "revive": action = .revive
        case "contactAge": action = .contactAge(try duration(value, "\(key).contactAge"))
        case "certificateExpiresIn": action = .certificateExpiresIn(try duration(value, "\(key).certificateExpiresIn"))
        case "flap":
            let period = try duration(value, "\(key).flap")
            guard period >= .seconds(1) else { throw Problem(description: "\(key).flap: at least 1s") }
            action = .flap(period)
        default: throw Problem(description: "\(key): unknown action '\(name)'")
        }
        return Event(at: at, selection: selection, action: action)
    }
}
