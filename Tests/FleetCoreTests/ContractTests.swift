import FleetCore
import Foundation
import Testing

@Suite("site ids and topics")
struct IdentifierTests {
    @Test("valid site ids", arguments: ["a", "0", "store-0042", "a-b-c", String(repeating: "x", count: 63), "9lives"])
    func valid(_ id: String) throws {
        #expect(try SiteID(id).rawValue == id)
    }

    @Test(
        "invalid site ids are refused with a message",
        arguments: ["", "-store", "Store", "store_1", "store/1", "store+", "store#", "$SYS", "a b", "städt",
                    String(repeating: "x", count: 64), "store.1"])
    func invalid(_ id: String) {
        #expect(throws: IdentifierError.self) { try SiteID(id) }
        #expect(SiteID.problem(with: id)?.isEmpty == false)
    }

    @Test("topics round-trip through name and parse")
    func roundTrip() throws {
        let topics = FleetTopics(root: try TopicRoot("acme/edge/v1"))
        let site = try SiteID("store-7")
        let all: [FleetTopic] = SiteChannel.allCases.map { .site(site, $0) } + [.siteView(site), .fleetStatus, .fleetEvents, .aggregatorPresence]
        for topic in all {
            #expect(try topics.parse(topics.name(topic)).get() == topic)
        }
        #expect(topics.name(.site(site, .heartbeat)) == "acme/edge/v1/sites/store-7/heartbeat")
        #expect(topics.name(.siteView(site)) == "acme/edge/v1/fleet/sites/store-7")
        #expect(topics.everySite(.status) == "acme/edge/v1/sites/+/status")
        #expect(topics.siteFilter(site) == "acme/edge/v1/sites/store-7/#")
    }

    @Test(
        "topics that do not parse are rejected, never crash",
        arguments: ["", "/", "edgefleet/v1", "edgefleet/v1/", "edgefleet/v2/sites/a/heartbeat", "edgefleet/v1/sites/a",
                    "edgefleet/v1/sites/a/heartbeat/extra", "edgefleet/v1/sites//heartbeat", "edgefleet/v1/sites/A/heartbeat",
                    "edgefleet/v1/sites/a/logs", "edgefleet/v1/fleet", "edgefleet/v1/fleet/sites/", "edgefleet/v1/fleet/sites/a/b",
                    "edgefleet/v1/sites/+/heartbeat", "edgefleet/v1/sites/#", "edgefleet/v1/aggregator", "\u{0}"])
    func unparsable(_ topic: String) {
        #expect(throws: TopicParseError.self) { try FleetTopics().parse(topic).get() }
    }

    @Test("an invalid site in a topic is reported as such")
    func invalidSiteInTopic() {
        let result = FleetTopics().parse("edgefleet/v1/sites/Bad_Site/status")
        guard case .failure(.invalidSiteID(_, let problem)) = result else {
            Issue.record("expected invalidSiteID, got \(result)")
            return
        }
        #expect(problem.contains("Bad_Site"))
    }

    @Test("topic roots", arguments: [("edgefleet/v1", true), ("a", true), ("", false), ("a/", false), ("/a", false), ("a//b", false), ("a/+", false), ("a/#", false), ("$SYS/x", false)])
    func roots(_ text: String, _ ok: Bool) {
        #expect(((try? TopicRoot(text)) != nil) == ok)
    }
}

@Suite("durations and timestamps")
struct FormatTests {
    @Test(
        "durations parse",
        arguments: [("90s", 90_000), ("15m", 900_000), ("36h", 129_600_000), ("30d", 2_592_000_000), ("2w", 1_209_600_000),
                    ("500ms", 500), ("1h30m", 5_400_000), ("1d 12h", 129_600_000), ("0", 0)] as [(String, Int64)])
    func parse(_ text: String, _ milliseconds: Int64) throws {
        #expect(try DurationFormat.parse(text) == .milliseconds(milliseconds))
    }

    @Test("bad durations are refused with a message", arguments: ["", "15", "m", "15x", "-5s", "1.5h", "15 minutes", "99999999999999999d"])
    func bad(_ text: String) {
        #expect(throws: DurationFormat.ParseError.self) { try DurationFormat.parse(text) }
    }

    @Test("durations format back to the shortest exact text and to human text")
    func format() throws {
        for text in ["15m", "30d", "1h30m", "250ms", "2d3h4m5s"] {
            #expect(DurationFormat.format(try DurationFormat.parse(text)) == text)
        }
        #expect(DurationFormat.human(seconds: 12 * 86_400 + 4 * 3600 + 59) == "12d 4h")
        #expect(DurationFormat.human(seconds: 3 * 3600 + 5 * 60) == "3h 5m")
        #expect(DurationFormat.human(seconds: 86_400 + 30) == "1d")
        #expect(DurationFormat.human(seconds: 42.9) == "42s")
        #expect(DurationFormat.human(seconds: 0) == "0s")
        #expect(DurationFormat.human(seconds: -3700) == "-1h 1m")
    }

    @Test("RFC 3339 with milliseconds, round trip and other offsets")
    func timestamps() throws {
        let date = try #require(RFC3339.parse("2026-11-26T15:00:00.123Z"))
        #expect(RFC3339.format(date) == "2026-11-26T15:00:00.123Z")
        #expect(RFC3339.parse("2026-11-26T16:00:00.123+01:00") == date)
        #expect(RFC3339.parse("2026-11-26T15:00:00Z").map(RFC3339.format) == "2026-11-26T15:00:00.000Z")
        #expect(RFC3339.format(Date(timeIntervalSince1970: 0)) == "1970-01-01T00:00:00.000Z")
        #expect(RFC3339.format(RFC3339.parse("2024-02-29T23:59:59.999Z")!) == "2024-02-29T23:59:59.999Z")
        #expect(RFC3339.format(Date(timeIntervalSince1970: -0.5)) == "1969-12-31T23:59:59.500Z")
        for bad in ["", "2026-11-26", "2026-11-26T15:00:00", "2026-13-01T00:00:00Z", "2026-02-30T00:00:00Z", "2026-11-26T25:00:00Z",
                    "2026-11-26T15:00:00.Z", "2026-11-26T15:00:00Zjunk", "yesterday"] {
            #expect(RFC3339.parse(bad) == nil, "\(bad)")
        }
    }
}

@Suite("payloads")
struct PayloadTests {
    let site = try! SiteID("store-0042")
    let now = RFC3339.parse("2026-11-26T15:00:00.000Z")!

    @Test("presence encodes as the contract shows and decodes back")
    func presence() throws {
        let presence = Presence(
            site: site, state: .online, session: 17, agent: AgentInfo(version: "0.3.0", host: "node-a"), heartbeatIntervalS: 10, at: now)
        let json = String(decoding: try FleetJSON.encode(presence), as: UTF8.self)
        #expect(json == #"{"agent":{"host":"node-a","version":"0.3.0"},"at":"2026-11-26T15:00:00.000Z","heartbeatIntervalS":10,"schema":"edgefleet.presence/1","session":17,"site":"store-0042","state":"online"}"#)
        #expect(try FleetJSON.decode(Presence.self, from: Array(json.utf8)) == presence)
    }

    @Test("a heartbeat with no contact ever carries an explicit null age")
    func heartbeatNull() throws {
        let heartbeat = Heartbeat(site: site, session: 1, seq: 5, sentAt: now, azure: AzureReport(reachable: false, lastContactAgeS: nil, probe: "endpoints"))
        let json = String(decoding: try FleetJSON.encode(heartbeat), as: UTF8.self)
        #expect(json.contains(#""lastContactAgeS":null"#))
        #expect(try FleetJSON.decode(Heartbeat.self, from: Array(json.utf8)) == heartbeat)
    }

    @Test("every payload type round-trips")
    func roundTrips() throws {
        let status = SiteStatus(
            site: site, session: 3, at: now, cluster: ClusterInfo(name: "aks-store-42", resourceGroup: "rg"),
            checks: [CheckResult(name: "kube-api", state: .pass, observedAt: now, durationMs: 34, output: "ok")],
            capabilities: ["clusterAutoscaler": true])
        #expect(try FleetJSON.decode(SiteStatus.self, from: FleetJSON.encode(status)) == status)
        let evaluation = ConnectivityEvaluator.evaluate(SiteKnowledge(lastAzureContactAt: now, lastSeenAt: now), thresholds: Thresholds(), now: now)
        let view = SiteView(site: site, evaluation: evaluation, lastHeartbeatAt: now, lastAzureContactAt: now, checks: CheckCounts(status.checks))
        let viewJSON = String(decoding: try FleetJSON.encode(view), as: UTF8.self)
        #expect(viewJSON.contains(#""mode":"connected""#) && viewJSON.contains(#""schema":"edgefleet.site/1""#))
        #expect(try FleetJSON.decode(SiteView.self, from: Array(viewJSON.utf8)) == view)
        var modes = ModeCounts()
        modes[.semiConnected] = 2
        modes[.connected] = 1
        var queue = OperationCounts()
        queue.queued = 2
        let summary = FleetSummary(
            at: now, sites: 3, modes: modes, liveness: LivenessCounts(),
            nearestDeadlines: [DeadlineEntry(site: site, mode: .semiConnected, deadline: now, remainingS: 0)], queue: queue)
        #expect(summary.fleetMode == .degraded)
        let summaryJSON = String(decoding: try FleetJSON.encode(summary), as: UTF8.self)
        #expect(summaryJSON.contains(#""semi-connected":2"#))
        #expect(try FleetJSON.decode(FleetSummary.self, from: Array(summaryJSON.utf8)) == summary)
        // The queue's counts are typed: every state is written, and a state missing on reading counts 0.
        #expect(summaryJSON.contains(#""queued":2"#) && summaryJSON.contains(#""superseded":0"#))
        let partial = try FleetJSON.decode(OperationCounts.self, from: Array(#"{"failed":1}"#.utf8))
        #expect(partial.failed == 1 && partial.queued == 0 && partial[.failed] == 1)
        let event = FleetEvent(type: .modeChanged, site: site, at: now, from: "connected", to: "semi-connected")
        #expect(try FleetJSON.decode(FleetEvent.self, from: FleetJSON.encode(event)) == event)
    }

    @Test("a payload with another schema, a bad site or a bad time is refused with the reason")
    func refusals() throws {
        let good = #"{"schema":"edgefleet.presence/1","site":"store-0042","state":"online","session":1,"at":"2026-11-26T15:00:00.000Z"}"#
        #expect(throws: Never.self) { try FleetJSON.decode(Presence.self, from: Array(good.utf8)) }
        let cases: [(String, (any Error) -> Bool)] = [
            (good.replacingOccurrences(of: "presence/1", with: "presence/2"), { ($0 as? PayloadError) == .unsupportedSchema(found: "edgefleet.presence/2", expected: "edgefleet.presence/1") }),
            (good.replacingOccurrences(of: "edgefleet.presence/1", with: "edgefleet.heartbeat/1"), { if case PayloadError.unsupportedSchema = $0 { true } else { false } }),
            (good.replacingOccurrences(of: "store-0042", with: "Store/42"), { if case PayloadError.invalidSiteID = $0 { true } else { false } }),
            (good.replacingOccurrences(of: "2026-11-26T15:00:00.000Z", with: "last tuesday"), { ($0 as? PayloadError) == .invalidTimestamp("last tuesday") }),
            (good.replacingOccurrences(of: #""schema":"edgefleet.presence/1","#, with: ""), { $0 is DecodingError }),
            ("{not json", { $0 is DecodingError }),
            (good.replacingOccurrences(of: #""online""#, with: #""sleeping""#), { $0 is DecodingError }),
        ]
        for (json, check) in cases {
            #expect(performing: { try FleetJSON.decode(Presence.self, from: Array(json.utf8)) }, throws: check)
        }
    }

    @Test("check states follow Nagios exit codes", arguments: [(0, CheckState.pass), (1, .warn), (2, .fail), (3, .unknown), (-1, .unknown), (127, .unknown)] as [(Int32, CheckState)])
    func nagios(_ code: Int32, _ state: CheckState) {
        #expect(CheckState(exitCode: code) == state)
    }
}
